"""Module paths that are other modules: Lightning's public paths where featherlight keeps the code elsewhere.

``featherlight.pytorch.X`` is ``featherlight.X`` (``featherlight.pytorch`` stands in for ``lightning.pytorch``),
and a few Lightning paths name modules that live on another floor here: the tuner's callbacks are
``lightning.pytorch.callbacks.batch_size_finder``/``lr_finder`` in Lightning and
``featherlight.tuner.batch_size_finder``/``learning_rate_finder`` here, beside the tuner they belong to. A meta
path finder maps each such name onto the real module (the same module object, not a copy) on first import,
so the aliases cost nothing until used and nothing below this package face depends on them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any, Optional

MOVED = {
    "featherlight.callbacks.batch_size_finder": "featherlight.tuner.batch_size_finder",
    "featherlight.callbacks.lr_finder": "featherlight.tuner.learning_rate_finder",
    # lightning.pytorch.plugins.io / lightning.fabric.plugins.io modules
    "featherlight.plugins.io.checkpoint_plugin": "featherlight.io.checkpoint_io",
    "featherlight.plugins.io.torch_plugin": "featherlight.io.checkpoint_io",
    "featherlight.plugins.io.wrapper": "featherlight.io.checkpoint_io",
    "featherlight.plugins.io.async_plugin": "featherlight.io.async_checkpoint_io",
    "featherlight.fabric.plugins.io.checkpoint_io": "featherlight.io.checkpoint_io",
    "featherlight.fabric.plugins.io.torch_io": "featherlight.io.checkpoint_io",
    # the precision plugins' modules
    **{f"featherlight.{face}.precision.{name}": "featherlight.precision.precision"
       for face in ("plugins", "fabric.plugins") for name in ("precision", "amp", "half", "double")},
    # lightning.fabric.utilities modules that are featherlight's own utilities
    **{f"featherlight.fabric.utilities.{name}": f"featherlight.utilities.{name}"
       for name in ("apply_func", "data", "distributed", "enums", "exceptions", "imports", "rank_zero", "seed",
                    "types")},
    **{f"featherlight.{face}.{name}": "featherlight.accelerators.accelerator"
       for face in ("accelerators", "fabric.accelerators") for name in ("accelerator", "cpu", "cuda", "mps")
       if f"{face}.{name}" != "accelerators.accelerator"},
    "featherlight.fabric.loggers.logger": "featherlight.loggers.logger",
    "featherlight.fabric.loggers.csv_logs": "featherlight.loggers.csv_logs",
    "featherlight.fabric.loggers.tensorboard": "featherlight.loggers.tensorboard",
}
_PYTORCH = "featherlight.pytorch."


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(self.target)

    def exec_module(self, module: Any) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname.startswith(_PYTORCH):
            real = "featherlight." + fullname[len(_PYTORCH):]
            real = MOVED.get(real, real)
            if importlib.util.find_spec(real) is None:
                return None
            return importlib.util.spec_from_loader(fullname, _AliasLoader(real))
        real = MOVED.get(fullname)
        if real is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
