"""Walk nested batches: apply a function to every tensor, move a batch to a device, find its size."""
from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import Tensor


def apply_to_collection(data: Any, dtype: type | tuple, function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Apply ``function`` to every element of type ``dtype`` in a nested list/tuple/dict/namedtuple/dataclass."""
    if isinstance(data, dtype):
        return function(data, *args, **kwargs)
    if isinstance(data, Mapping):
        out = {k: apply_to_collection(v, dtype, function, *args, **kwargs) for k, v in data.items()}
        if type(data) is dict:
            return out
        if isinstance(data, defaultdict):
            return defaultdict(data.default_factory, out)
        try:  # OrderedDict and dict-like batch types rebuild from a dict
            return type(data)(out)
        except TypeError:
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(d, dtype, function, *args, **kwargs) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_collection(d, dtype, function, *args, **kwargs) for d in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_collection(getattr(data, f.name), dtype, function, *args, **kwargs)
            for f in dataclasses.fields(data)
            if f.init
        }
        return dataclasses.replace(data, **changes)
    return data


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (or object with a ``.to`` method) in ``batch`` to ``device``.

    Copies are non-blocking for CUDA targets; the caller relies on stream ordering, as PyTorch does.
    """
    if isinstance(device, str):
        device = torch.device(device)
    non_blocking = isinstance(device, torch.device) and device.type not in ("cpu", "mps")

    def to(data: Any) -> Any:
        if isinstance(data, Tensor):
            return data.to(device, non_blocking=non_blocking)
        out = data.to(device)
        return data if out is None else out  # some `.to` methods work in place and return None

    return apply_to_collection(batch, (Tensor, _HasTo), to)


class _HasToMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return not isinstance(obj, (type, Tensor, str, bytes)) and callable(getattr(obj, "to", None)) \
            and not isinstance(obj, (Mapping, Sequence)) and not dataclasses.is_dataclass(obj)


class _HasTo(metaclass=_HasToMeta):
    """Matches objects with a ``.to(device)`` method (e.g. torch_geometric ``Data``) in isinstance checks."""


def extract_batch_size(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in ``batch``.

    Raises ``ValueError`` naming the fix (``self.log(..., batch_size=N)``) when none can be found.
    """
    size = _first_size(batch)
    if size is None:
        raise ValueError(
            "Could not determine the batch size from the batch (no tensor found in it). "
            "Pass it explicitly: `self.log(..., batch_size=N)`."
        )
    return size


def _first_size(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return 1 if batch.ndim == 0 else batch.size(0)
    if isinstance(batch, (str, bytes)):
        return len(batch)
    if isinstance(batch, Mapping):
        batch = batch.values()
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    if isinstance(batch, Sequence) or hasattr(batch, "__iter__"):
        try:
            for sample in batch:
                size = _first_size(sample)
                if size is not None:
                    return size
        except TypeError:
            return None
    return None


def convert_to_tensors(data: Any, device: torch.device | str | int) -> Any:
    """Turn every Python ``bool``/``int``/``float`` and NumPy array in ``data`` into a tensor on ``device`` and move
    the tensors already there too. Bools become ``uint8`` (NCCL reduces no ``bool``), ints ``int32``, floats
    ``float32``."""

    def to_tensor(value: Any) -> Any:
        if isinstance(value, bool):
            return torch.tensor(value, dtype=torch.uint8, device=device)
        if isinstance(value, int):
            return torch.tensor(value, dtype=torch.int, device=device)
        if isinstance(value, float):
            return torch.tensor(value, dtype=torch.float, device=device)
        return torch.from_numpy(value).to(device)  # a NumPy array

    kinds: tuple = (bool, int, float)
    if "numpy" in sys.modules:  # only arrays of an already imported NumPy can be in `data`
        kinds += (sys.modules["numpy"].ndarray,)
    return move_data_to_device(apply_to_collection(data, kinds, to_tensor), device)


def convert_tensors_to_scalars(data: Any) -> Any:
    """Replace every one-element tensor in ``data`` by its Python number.

    Raises:
        ValueError: for a tensor with more than one element.
    """

    def to_item(value: Tensor) -> Any:
        if value.numel() != 1:
            raise ValueError(f"The tensor {value} has {value.numel()} elements; only a one-element tensor converts to "
                             "a scalar.")
        return value.item()

    return apply_to_collection(data, Tensor, to_item)
