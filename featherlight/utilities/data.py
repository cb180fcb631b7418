"""Small facts about dataloaders and the machine, under the names libraries import from Lightning
(``lightning.fabric.utilities.data``)."""
from __future__ import annotations

import os
from typing import Any, Optional

from featherlight.utilities.parsing import AttributeDict
from featherlight.utilities.rank_zero import rank_zero_warn

__all__ = ["AttributeDict", "has_iterable_dataset", "has_len", "sized_len", "suggested_max_num_workers"]


def has_iterable_dataset(dataloader: object) -> bool:
    """Whether ``dataloader`` reads a ``torch.utils.data.IterableDataset``."""
    from torch.utils.data import IterableDataset

    return isinstance(getattr(dataloader, "dataset", None), IterableDataset)


def sized_len(dataloader: object) -> Optional[int]:
    """``len(dataloader)``, or ``None`` when it has no length."""
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None


def has_len(dataloader: object) -> bool:
    """Whether ``dataloader`` has a length; warns when the length is 0, or when an ``IterableDataset`` defines one
    (with several workers each worker may count the whole dataset)."""
    length = sized_len(dataloader)
    if length == 0:
        rank_zero_warn(f"`{type(dataloader).__name__}` has length 0: it yields no batches. Check that this is "
                       "intended.")
    if length is not None and has_iterable_dataset(dataloader):
        rank_zero_warn(
            "Your `IterableDataset` defines `__len__`. With several dataloader workers that length is only right if "
            "each worker reads its own share of the data."
        )
    return length is not None


def _num_cpus_available() -> int:
    """CPU cores this process may run on (its affinity where the platform says, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for a ``DataLoader``'s ``num_workers``: the CPU cores available to this process shared among
    the ``local_world_size`` processes of this machine, one left for each main process (at least 1).

    Raises:
        ValueError: if ``local_world_size`` is below 1.
    """
    if local_world_size < 1:
        raise ValueError(f"`local_world_size` should be >= 1, got {local_world_size}.")
    return max(1, _num_cpus_available() // local_world_size - 1)


def _set_sampler_epoch(dataloader: object, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the dataloader's sampler and its batch sampler's sampler (once each), so a
    ``DistributedSampler`` shuffles differently every epoch."""
    samplers: dict[int, Any] = {}
    for sampler in (getattr(dataloader, "sampler", None),
                    getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)):
        if sampler is not None:
            samplers[id(sampler)] = sampler  # samplers may be unhashable
    for sampler in samplers.values():
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
