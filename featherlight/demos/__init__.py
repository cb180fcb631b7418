"""Small models and data for examples, bug reports and tests.

``featherlight.demos.BoringModel`` works as in Lightning (``--model=featherlight.demos.BoringModel`` on the CLI);
the classes load on first access.
"""
from typing import Any

_LAZY = {
    "BoringDataModule": "featherlight.demos.boring_classes",
    "BoringModel": "featherlight.demos.boring_classes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
