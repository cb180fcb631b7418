"""``lightning.fabric.loggers``: the logger base class (module ``logger``, with ``rank_zero_experiment``) and the
CSV and TensorBoard loggers, which are featherlight's (``featherlight.loggers``)."""
from featherlight.loggers.csv_logs import CSVLogger
from featherlight.loggers.logger import Logger
from featherlight.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
