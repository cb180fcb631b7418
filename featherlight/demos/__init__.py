"""Small models and data for examples, bug reports and tests, with the names of Lightning's demos.

``featherlight.demos.BoringModel`` works as in Lightning (``--model=featherlight.demos.BoringModel`` on the CLI);
the classes load on first access. Datasets that need a download (``WikiText2``, ``demos.mnist_datamodule.MNIST``)
fetch their files only when asked to.
"""
from typing import Any

_LAZY = {
    "BoringDataModule": "featherlight.demos.boring_classes",
    "BoringModel": "featherlight.demos.boring_classes",
    "DemoModel": "featherlight.demos.boring_classes",
    "LightningLSTM": "featherlight.demos.lstm",
    "LightningTransformer": "featherlight.demos.transformer",
    "SequenceSampler": "featherlight.demos.lstm",
    "SimpleLSTM": "featherlight.demos.lstm",
    "Transformer": "featherlight.demos.transformer",
    "WikiText2": "featherlight.demos.transformer",
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


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
