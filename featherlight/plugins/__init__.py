"""``featherlight.plugins`` stands in for ``lightning.pytorch.plugins``: what ``Trainer(plugins=[...])`` takes.

* checkpoint IO plugins, which decide how checkpoint files are written, read and removed: :class:`CheckpointIO`
  (the interface), :class:`TorchCheckpointIO` (the default: atomic ``torch.save``, safe ``torch.load``) and
  :class:`AsyncCheckpointIO` (writes on a background thread);
* precision plugins: :class:`Precision`, :class:`MixedPrecision`, :class:`HalfPrecision`, :class:`DoublePrecision`.

A face: the classes live in :mod:`featherlight.io` and :mod:`featherlight.precision`.
"""
from featherlight.io.async_checkpoint_io import AsyncCheckpointIO
from featherlight.io.checkpoint_io import CheckpointIO, TorchCheckpointIO
from featherlight.precision.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = [
    "AsyncCheckpointIO",
    "CheckpointIO",
    "DoublePrecision",
    "HalfPrecision",
    "MixedPrecision",
    "Precision",
    "TorchCheckpointIO",
]
