"""``lightning.fabric.plugins``: the checkpoint IO and precision plugins (see :mod:`featherlight.plugins`)."""
from featherlight.io.checkpoint_io import CheckpointIO, TorchCheckpointIO
from featherlight.precision.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["CheckpointIO", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TorchCheckpointIO"]
