"""featherlight: a lean, fast, trustworthy PyTorch training framework with the Lightning user API.

``import featherlight as L`` gives the names a Lightning program uses (``L.LightningModule``,
``L.Trainer``...); ``featherlight.pytorch`` stands in for ``lightning.pytorch``.
"""
from featherlight.__about__ import __version__
from featherlight.callbacks.callback import Callback
from featherlight.core.datamodule import LightningDataModule
from featherlight.core.module import LightningModule
from featherlight.trainer.trainer import Trainer
from featherlight.utilities.rank_zero import _init_package_logging
from featherlight.utilities.seed import seed_everything

_init_package_logging()

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything", "__version__"]

_SUBMODULES = {"callbacks", "core", "demos", "loggers", "precision", "profilers", "pytorch", "strategies", "trainer",
               "tuner", "utilities"}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # `featherlight.loggers.CSVLogger` without an explicit import, as `lightning.pytorch.loggers` works;
    # loaded on first use so `import featherlight` stays cheap.
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"featherlight.{name}")
    raise AttributeError(f"module 'featherlight' has no attribute {name!r}")
