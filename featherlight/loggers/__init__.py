"""Experiment loggers (``featherlight.loggers``), mirroring ``lightning.pytorch.loggers``.

Importing this package is cheap: ``tensorboard`` is only imported when a :class:`TensorBoardLogger` first creates its
writer, and the tracker loggers (:class:`MLFlowLogger`, :class:`WandbLogger`, :class:`CometLogger`,
:class:`NeptuneLogger`) are looked up on first use; their libraries (optional extras) are imported only when such a
logger is built or first logs.
"""

import importlib
from typing import Any

from featherlight.loggers.csv_logs import CSVLogger
from featherlight.loggers.logger import DummyLogger, Logger
from featherlight.loggers.tensorboard import TensorBoardLogger

# name -> module, imported on first attribute access (PEP 562)
_LAZY = {
    "MLFlowLogger": "featherlight.loggers.mlflow",
    "WandbLogger": "featherlight.loggers.wandb",
    "CometLogger": "featherlight.loggers.comet",
    "NeptuneLogger": "featherlight.loggers.neptune",
}

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featherlight.loggers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
