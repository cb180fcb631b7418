"""``lightning.fabric.plugins.io``: the checkpoint IO interface and the default plugin (modules ``checkpoint_io``
and ``torch_io`` are featherlight's :mod:`featherlight.io.checkpoint_io`)."""
from featherlight.io.checkpoint_io import CheckpointIO, TorchCheckpointIO

__all__ = ["CheckpointIO", "TorchCheckpointIO"]
