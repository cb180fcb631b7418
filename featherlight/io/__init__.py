"""The ground floor for files: writing them atomically, reading checkpoints without executing code, FSDP's
sharded (DCP) directories, and remote paths.

Everything that writes or reads a checkpoint (the trainer, strategies, callbacks, ``load_from_checkpoint``,
the exporters) goes through here, so there is one writer and one reader to trust:

* :mod:`featherlight.io.atomic`: ``atomic_write`` (temporary file in the same folder, fsync, rename, fsync the
  folder) and ``atomic_torch_save``;
* :mod:`featherlight.io.load`: ``load_checkpoint`` (``torch.load(weights_only=True)`` with an allow-list,
  clear errors for damaged or unsafe files, local paths, sharded directories and URLs);
* :mod:`featherlight.io.checkpoint_io`: the checkpoint IO plugins strategies write, read and remove checkpoints
  through (``CheckpointIO``, ``TorchCheckpointIO``; :mod:`featherlight.io.async_checkpoint_io`:
  ``AsyncCheckpointIO``);
* :mod:`featherlight.io.dcp`: ``torch.distributed.checkpoint`` directories read through the same allow-list;
* :mod:`featherlight.io.paths`: ``http(s)://`` and fsspec URLs (fsspec imported only when one is used).

This package imports nothing of featherlight above ``utilities``.
"""
