"""Checkpoint IO plugins: how a strategy writes, reads and removes checkpoint files.

Lightning's extension point for checkpoint storage, under its names: a library customises checkpoint writing by
subclassing :class:`CheckpointIO` (or :class:`TorchCheckpointIO`) and passing an instance in
``Trainer(plugins=[...])``; the strategy's ``save_checkpoint``/``load_checkpoint`` and ``ModelCheckpoint``'s
removal of old files go through it.

:class:`TorchCheckpointIO`, the default, keeps featherlight's guarantees: writes are atomic
(:func:`featherlight.io.atomic.atomic_torch_save`) and reads run no code from the file unless
``weights_only=False`` (:func:`featherlight.io.load.load_checkpoint`). Local paths and fsspec URLs both work.
"""
from __future__ import annotations

import logging
import os
import shutil
from abc import ABC, abstractmethod
from typing import Any, Optional, Union

from featherlight.io.atomic import atomic_torch_save
from featherlight.io.load import load_checkpoint
from featherlight.io.paths import get_filesystem, is_remote

log = logging.getLogger(__name__)

_PATH = Union[str, "os.PathLike[str]"]

__all__ = ["CheckpointIO", "TorchCheckpointIO"]


class CheckpointIO(ABC):
    """How checkpoints are written, read and removed. Subclass it and pass an instance in ``Trainer(plugins=[...])``
    (or ``Strategy(checkpoint_io=...)``) to store checkpoints your own way.

    The strategy calls :meth:`save_checkpoint` on global rank zero only (for one-file checkpoints), and
    :meth:`teardown` when a run ends.
    """

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` (the dict the trainer built) to ``path``.

        Args:
            checkpoint: the model and training state.
            path: where to write it.
            storage_options: anything ``Trainer.save_checkpoint(..., storage_options=...)`` passed on.
        """

    @abstractmethod
    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path`` and return its dict.

        Args:
            path: the checkpoint to read.
            map_location: where tensors go: a device, its name, a dict remapping saved locations, or a function
                (as for :func:`torch.load`).
            weights_only: ``True`` (or ``None``) reads only tensors and plain Python types, so no code from the
                file runs; ``False`` allows arbitrary unpickling, for files from a source you trust.
        """

    @abstractmethod
    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete the checkpoint at ``path`` (a file, or a sharded checkpoint's directory); nothing if it is gone."""

    def teardown(self) -> None:
        """Called when a run ends: finish (or release) whatever the plugin still holds."""


class TorchCheckpointIO(CheckpointIO):
    """:func:`torch.save`/:func:`torch.load` checkpoints, local or behind any fsspec URL.

    Writes are atomic (a reader sees the old file or the complete new one; parent directories are created) and
    reads refuse anything that needs code from the file unless ``weights_only=False``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` atomically to ``path``.

        Raises:
            TypeError: if ``storage_options`` is given: this plugin has none; implement a ``CheckpointIO`` that
                uses them.
        """
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by `{type(self).__name__}`: "
                "it has no storage options. Pass your own `CheckpointIO` in `Trainer(plugins=[...])` to define what "
                "they do."
            )
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``; tensors land on the CPU unless ``map_location`` says otherwise.

        ``weights_only=None`` means ``True``: no code from the file runs (featherlight's default; pass ``False``
        for a trusted file that holds arbitrary objects).

        Raises:
            FileNotFoundError: if there is nothing at ``path``.
            featherlight.utilities.exceptions.CheckpointError: for a damaged file, or one that needs
                ``weights_only=False``.
        """
        return load_checkpoint(path, map_location="cpu" if map_location is None else map_location,
                               weights_only=weights_only is not False)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete the file (or sharded checkpoint directory) at ``path``; nothing if it does not exist."""
        path = os.fspath(path)
        if is_remote(path):
            fs = get_filesystem(path)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                return
        log.debug(f"Removed checkpoint: {path}")


class _WrappingCheckpointIO(CheckpointIO):
    """A checkpoint IO that hands the work to another one (``checkpoint_io``), e.g. to do it elsewhere or later.

    Without one, the strategy it is given to fills in its own (see ``Strategy.checkpoint_io``); used on its own it
    falls back to :class:`TorchCheckpointIO`.
    """

    def __init__(self, checkpoint_io: Optional[CheckpointIO] = None) -> None:
        super().__init__()
        self._checkpoint_io = checkpoint_io

    @property
    def checkpoint_io(self) -> Optional[CheckpointIO]:
        """The plugin doing the work (``None`` until one is given or first needed)."""
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, checkpoint_io: CheckpointIO) -> None:
        if isinstance(checkpoint_io, _WrappingCheckpointIO):
            raise ValueError(f"{type(self).__name__} needs a plain CheckpointIO to hand the work to, not another "
                             f"wrapper ({type(checkpoint_io).__name__}).")
        self._checkpoint_io = checkpoint_io

    def _base(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        self._base().save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        return self._base().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: _PATH) -> None:
        self._base().remove_checkpoint(path)

    def teardown(self) -> None:
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()
