"""``featherlight.fabric`` stands in for ``lightning.fabric``: the module paths and names that libraries built on
Lightning import from it (``utilities.types``, ``utilities.rank_zero``, ``utilities.cloud_io``, ``plugins``...).

This is a face: the code lives on featherlight's lower floors, and most submodules here *are* those modules (the
same module objects, mapped by :mod:`featherlight._aliases`), so patching one patches the other. featherlight does
not implement Lightning's ``Fabric`` class itself.
"""
import importlib
from typing import Any

from featherlight.__about__ import __featherlight_version__, __version__  # noqa: F401
from featherlight.utilities.seed import seed_everything

__all__ = ["seed_everything", "__version__"]

_SUBPACKAGES = {"accelerators", "loggers", "plugins", "utilities"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("Fabric", "is_wrapped"):
        raise AttributeError(
            f"featherlight.fabric does not provide `{name}`: featherlight implements the Trainer API "
            "(`featherlight.Trainer`), not Lightning's `Fabric`. The helpers of `lightning.fabric.utilities`, "
            "`lightning.fabric.plugins` and `lightning.fabric.accelerators` are here."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | _SUBPACKAGES)
