"""Collective helpers that work with or without a process group, under the names libraries import from Lightning
(``lightning.fabric.utilities.distributed``).

Each helper is a no-op in a single process (no ``torch.distributed`` process group initialised), so library code
calls them unconditionally. ``torch.distributed`` is imported only when a helper is called.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

_PATH = Union[str, "os.PathLike[str]"]

__all__ = [
    "ReduceOp",
    "group",
    "is_shared_filesystem",
    "_all_gather_ddp_if_available",
    "_distributed_available",
    "_distributed_is_initialized",
    "_gather_all_tensors",
    "_get_default_process_group_backend_for_device",
    "_sync_ddp",
    "_sync_ddp_if_available",
]

if torch.distributed.is_available():
    from torch.distributed import ReduceOp, group
else:  # a torch build without distributed support: the names exist, nothing is ever reduced

    class ReduceOp:  # type: ignore[no-redef]
        """Stand-in for ``torch.distributed.ReduceOp`` when torch has no distributed support."""

        SUM = "sum"
        AVG = "avg"
        PRODUCT = "product"
        MIN = "min"
        MAX = "max"

    class group:  # type: ignore[no-redef]  # noqa: N801 - torch's name
        """Stand-in for ``torch.distributed.group`` when torch has no distributed support."""

        WORLD = None


def _distributed_is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up in this process (``False`` where torch has no
    distributed support)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


_distributed_available = _distributed_is_initialized  # Lightning's other name for it


def _get_default_process_group_backend_for_device(device: torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


def _sync_ddp_if_available(result: Tensor, group: Optional[Any] = None,
                           reduce_op: Optional[Union[Any, str]] = None) -> Tensor:
    """Reduce ``result`` across processes (:func:`_sync_ddp`) when a process group is up; else return it as is."""
    if _distributed_is_initialized():
        return _sync_ddp(result, group=group, reduce_op=reduce_op)
    return result


def _sync_ddp(result: Tensor, group: Optional[Any] = None, reduce_op: Optional[Union[Any, str]] = None) -> Tensor:
    """All-reduce ``result`` in place across the processes of ``group`` (default: all) and return it.

    ``reduce_op`` is a ``ReduceOp`` or its name (``"sum"`` by default, ``"mean"``/``"avg"``, ``"max"``, ``"min"``,
    ``"product"``). A mean on the gloo backend (which has no ``AVG``) is a sum divided by the world size; an
    integer tensor keeps its dtype (the quotient is truncated), as in Lightning.
    """
    dist = torch.distributed
    group = dist.group.WORLD if group is None else group
    divide = False
    op: Any = reduce_op
    if reduce_op is None:
        op = dist.ReduceOp.SUM
    elif isinstance(reduce_op, str):
        name = "avg" if reduce_op.lower() == "mean" else reduce_op.lower()
        if name == "avg" and dist.get_backend(group) == "gloo":
            op, divide = dist.ReduceOp.SUM, True
        elif hasattr(dist.ReduceOp, name.upper()):
            op = getattr(dist.ReduceOp, name.upper())
        else:
            raise ValueError(f"reduce_op={reduce_op!r} is not a reduction; use 'sum', 'mean', 'max', 'min' or "
                             "'product' (or a torch.distributed.ReduceOp).")
    dist.barrier(group=group)
    dist.all_reduce(result, op=op, group=group)
    if not divide:
        return result
    world_size = dist.get_world_size(group)
    if result.is_floating_point():
        return result.div_(world_size)
    return result.copy_(result / world_size)


def _all_gather_ddp_if_available(tensor: Tensor, group: Optional["ProcessGroup"] = None,
                                 sync_grads: bool = False) -> Tensor:
    """``tensor`` from every process stacked along a new first dimension (``(world_size, *tensor.shape)``); the
    tensor itself without a process group. ``sync_grads=True`` lets gradients flow back through the gather."""
    if not _distributed_is_initialized():
        return tensor
    group = group if group is not None else torch.distributed.group.WORLD
    tensor = tensor.contiguous()
    if not sync_grads:  # the plain collective: no autograd node, no deprecation warning
        gathered = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(gathered, tensor, group=group)
        return torch.stack(gathered)
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.13 deprecates it in favour of a private module
        warnings.simplefilter("ignore", FutureWarning)
        gathered = all_gather(tensor, group)
    return torch.stack(gathered)


def _gather_all_tensors(result: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """One tensor per process of ``group`` (default: all), in rank order, on every process.

    The tensors must have the same number of dimensions but may differ in size: each is padded to the largest
    size for the gather and cut back to its own size after it.
    """
    dist = torch.distributed
    group = dist.group.WORLD if group is None else group
    result = result.contiguous()
    world_size = dist.get_world_size(group)
    dist.barrier(group=group)
    if result.ndim == 0:
        return _gather_same_shape(result, group, world_size)
    local_size = torch.tensor(result.shape, device=result.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size, group=group)
    max_size = torch.stack(sizes).max(dim=0).values
    if all(bool((size == max_size).all()) for size in sizes):
        return _gather_same_shape(result, group, world_size)
    padding: list[int] = []
    for missing in reversed((max_size - local_size).tolist()):  # F.pad takes the last dimension first
        padding += [0, int(missing)]
    padded = torch.nn.functional.pad(result, padding)
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    return [tensor[tuple(slice(int(n)) for n in size)] for tensor, size in zip(gathered, sizes)]


def _gather_same_shape(result: Tensor, group: Any, world_size: int) -> list[Tensor]:
    gathered = [torch.zeros_like(result) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, result, group=group)
    return gathered


def is_shared_filesystem(strategy: Any, path: Optional[_PATH] = None, timeout: int = 3) -> bool:
    """Whether ``path`` (default: the working directory) is on a file system every process of ``strategy`` sees.

    A remote URL (``s3://``...) counts as shared, and so does any path in a single process. Otherwise rank zero
    creates a marker file that the other ranks must see within ``timeout`` seconds. Every process must call this.

    Raises:
        FileNotFoundError: if ``path`` does not exist on some process.
    """
    if path is not None and "://" in os.fspath(path) and not os.fspath(path).lower().startswith(("file://", "local://")):
        return True  # an fsspec URL: the same store for everyone
    resolved = Path(Path.cwd() if path is None else path).resolve()
    if strategy.world_size == 1:
        return True
    if not strategy.reduce_boolean_decision(strategy.broadcast(resolved) == resolved, all=True):
        return False  # the path differs between processes
    if not strategy.reduce_boolean_decision(resolved.exists(), all=True):
        raise FileNotFoundError(f"Cannot tell whether {str(resolved)!r} is on a shared file system: it does not "
                                "exist on every process.")
    directory = resolved.parent if resolved.is_file() else resolved
    marker = directory / ".featherlight_shared_fs_check"
    with contextlib.suppress(OSError):
        marker.unlink()
    strategy.barrier()
    if strategy.is_global_zero:
        marker.touch()
        found = True
    else:
        deadline = time.monotonic() + timeout
        found = marker.exists()
        while not found and time.monotonic() < deadline:
            time.sleep(0.01)
            found = marker.exists()
    strategy.barrier()
    shared = strategy.reduce_boolean_decision(found, all=True)
    with contextlib.suppress(OSError):  # several ranks may remove it at once
        marker.unlink()
    return shared
