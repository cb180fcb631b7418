"""``featherlight.pytorch`` stands in for ``lightning.pytorch``: the same names, the same submodules.

``featherlight.pytorch.callbacks`` *is* ``featherlight.callbacks`` (one module object, not a copy):
a finder maps every ``featherlight.pytorch.X`` import onto ``featherlight.X`` lazily, so the alias
costs nothing until used.
"""
import importlib
import importlib.abc
import importlib.util
import sys

from featherlight import *  # noqa: F401,F403
from featherlight import __all__, __version__  # noqa: F401

_PREFIX = __name__ + "."


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if not fullname.startswith(_PREFIX):
            return None
        real = "featherlight." + fullname[len(_PREFIX):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # `featherlight.pytorch.callbacks` as an attribute, without an import statement
    try:
        return importlib.import_module(f"featherlight.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'featherlight.pytorch' has no attribute {name!r}") from None
