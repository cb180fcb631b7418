"""``featherlight.pytorch`` stands in for ``lightning.pytorch``: the same names, the same submodules.

``featherlight.pytorch.callbacks`` *is* ``featherlight.callbacks`` (one module object, not a copy):
a finder maps every ``featherlight.pytorch.X`` import onto ``featherlight.X`` lazily, so the alias
costs nothing until used.
"""
import importlib

from featherlight import *  # noqa: F401,F403
from featherlight import __all__, __featherlight_version__, __version__  # noqa: F401
from featherlight._aliases import install

install()  # `featherlight.pytorch.X` imports resolve to `featherlight.X` (also done by `import featherlight`)


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # `featherlight.pytorch.callbacks` as an attribute, without an import statement
    try:
        return importlib.import_module(f"featherlight.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'featherlight.pytorch' has no attribute {name!r}") from None
