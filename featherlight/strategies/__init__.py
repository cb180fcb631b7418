"""Strategies: single device, DDP and FSDP (both on torch.distributed).

``DDPStrategy`` and ``FSDPStrategy`` are imported on first use, so ``import featherlight`` does not
load ``torch.distributed``'s FSDP/DTensor machinery.
"""
from typing import Any

from featherlight.strategies.strategy import ParallelStrategy, SingleDeviceStrategy, Strategy

__all__ = ["Strategy", "SingleDeviceStrategy", "ParallelStrategy", "DDPStrategy", "FSDPStrategy"]

_LAZY = {"DDPStrategy": "featherlight.strategies.ddp", "FSDPStrategy": "featherlight.strategies.fsdp"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featherlight.strategies' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
