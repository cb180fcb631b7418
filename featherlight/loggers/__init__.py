"""Experiment loggers (``featherlight.loggers``), mirroring ``lightning.pytorch.loggers``.

Importing this package is cheap: ``tensorboard`` is only imported when a :class:`TensorBoardLogger` first creates its
writer.
"""

from featherlight.loggers.csv_logs import CSVLogger
from featherlight.loggers.logger import DummyLogger, Logger
from featherlight.loggers.tensorboard import TensorBoardLogger

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger"]
