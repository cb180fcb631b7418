"""``lightning.pytorch.plugins.io``: the checkpoint IO plugins (their modules ``checkpoint_plugin``,
``torch_plugin``, ``async_plugin`` and ``wrapper`` are featherlight's :mod:`featherlight.io` modules)."""
from featherlight.io.async_checkpoint_io import AsyncCheckpointIO
from featherlight.io.checkpoint_io import CheckpointIO, TorchCheckpointIO

__all__ = ["AsyncCheckpointIO", "CheckpointIO", "TorchCheckpointIO"]
