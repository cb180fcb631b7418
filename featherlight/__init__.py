"""featherlight: a lean, fast, trustworthy PyTorch training framework with the Lightning user API.

``import featherlight as L`` gives the names a Lightning program uses (``L.LightningModule``,
``L.Trainer``...); ``featherlight.pytorch`` stands in for ``lightning.pytorch``.

The public names and submodules load on first use, so ``import featherlight`` itself costs almost
nothing on top of ``import torch``.
"""
import importlib
from typing import TYPE_CHECKING, Any

from featherlight import _aliases
from featherlight.__about__ import __featherlight_version__, __lightning_version__, __version__  # noqa: F401
from featherlight.utilities.rank_zero import _init_package_logging

_init_package_logging()
_aliases.install()  # Lightning's module paths for code featherlight keeps elsewhere, resolved on first import

_NAMES = {
    "Callback": "featherlight.callbacks.callback",
    "LightningDataModule": "featherlight.core.datamodule",
    "LightningModule": "featherlight.core.module",
    "Trainer": "featherlight.trainer.trainer",
    "cli_lightning_logo": "featherlight._logo",
    "seed_everything": "featherlight.utilities.seed",
}
_SUBMODULES = {"accelerators", "callbacks", "cli", "core", "demos", "fabric", "io", "loggers", "plugins",
               "precision", "profilers", "pytorch", "strategies", "trainer", "tuner", "utilities"}

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "cli_lightning_logo", "seed_everything",
           "__version__", "__featherlight_version__"]

if TYPE_CHECKING:
    from featherlight._logo import cli_lightning_logo
    from featherlight.callbacks.callback import Callback
    from featherlight.core.datamodule import LightningDataModule
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer
    from featherlight.utilities.seed import seed_everything


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if name in _SUBMODULES:
        # `featherlight.loggers.CSVLogger` without an explicit import, as `lightning.pytorch.loggers` works
        return importlib.import_module(f"featherlight.{name}")
    raise AttributeError(f"module 'featherlight' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | _SUBMODULES)
