"""Write a checkpoint when a run is interrupted by an exception."""
from __future__ import annotations

import os
from typing import Any, Union

from featherlight.callbacks.checkpoint import Checkpoint

_PATH = Union[str, "os.PathLike[str]"]


class OnExceptionCheckpoint(Checkpoint):
    """Save ``{dirpath}/{filename}.ckpt`` when ``fit``/``validate``/``test``/``predict`` raises.

    The file is (over)written from ``on_exception`` through ``trainer.save_checkpoint``, which writes
    atomically, so an exception in the middle of the write never leaves a torn file behind. When a later
    run on the same trainer finishes without an exception, ``teardown`` removes the file again, so a
    leftover ``on_exception.ckpt`` always belongs to the most recent failed run.

    Args:
        dirpath: directory of the checkpoint; required up front because an exception may happen before
            any ``setup`` hook had the chance to pick a directory.
        filename: file name without the ``.ckpt`` extension.

    Raises:
        ValueError: if ``filename`` is empty.

    Example::

        trainer = Trainer(callbacks=[OnExceptionCheckpoint(dirpath="checkpoints")])
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: _PATH, filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError("`OnExceptionCheckpoint(filename=...)` must not be empty.")
        self.dirpath = os.fspath(dirpath)
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written."""
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: "Trainer", *_: Any, **__: Any) -> None:
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: "Trainer", *_: Any, **__: Any) -> None:
        # a successful run: a checkpoint left by an earlier failure is stale now
        if trainer.is_global_zero and (os.path.isfile(self.ckpt_path) or os.path.islink(self.ckpt_path)):
            os.remove(self.ckpt_path)
