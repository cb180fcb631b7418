"""Shared machinery of the experiment-tracker loggers (MLflow, W&B, Comet, Neptune).

* :func:`_require` checks that a tracker library is importable without importing it, and names the extra to
  install when it is not.
* :func:`_scan_checkpoints` lists the checkpoints of a ``ModelCheckpoint`` that a logger has not uploaded yet.
* :class:`_BackgroundUploader` runs checkpoint uploads on one worker thread, from hard-linked snapshots of the
  files, so that a ``log_model`` upload never holds up the training loop for longer than the ``os.link`` calls.

Nothing here imports a tracker library.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from featherlight.utilities.rank_zero import rank_zero_warn

log = logging.getLogger(__name__)

# Attributes of a checkpoint callback recorded next to an uploaded checkpoint (those it has).
_CALLBACK_SETTINGS = (
    "monitor",
    "mode",
    "save_last",
    "save_top_k",
    "save_weights_only",
    "_every_n_train_steps",
    "_every_n_val_epochs",
)


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require(module: str, extra: str, logger_name: str, pip_name: Optional[str] = None) -> None:
    """Raise :class:`ModuleNotFoundError` naming the extra to install unless ``module`` can be imported.

    Uses :func:`importlib.util.find_spec`, so checking costs nothing and the library is still imported only when it
    is first used.
    """
    if not _module_available(module):
        raise ModuleNotFoundError(
            f"{logger_name} needs the `{pip_name or module}` package, which is not installed. Install it with"
            f" `pip install 'featherlight[{extra}]'` (or `pip install {pip_name or module}`)."
        )


def _to_float(value: Any) -> Any:
    """A tensor/array scalar as a Python number (a host sync, but loggers only see values at log intervals)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return value


@dataclass
class _CheckpointRecord:
    """What an upload needs to know about one checkpoint file, read from the callback when it was saved."""

    path: str
    mtime: float
    score: Any
    tag: str  # "latest", "best" or "best_k"
    is_best: bool
    settings: dict[str, Any] = field(default_factory=dict)


def _scan_checkpoints(checkpoint_callback: Any, logged: Mapping[str, float]) -> list[_CheckpointRecord]:
    """The checkpoints of ``checkpoint_callback`` that exist on disk and are new or newer than in ``logged``.

    ``logged`` maps a path to the modification time it had when it was uploaded (a ``last.ckpt`` is rewritten in
    place, so the path alone does not tell). Candidates are the callback's last checkpoint, its best one and its
    top-k ones; they come back oldest first.
    """
    candidates: dict[str, tuple[Any, str]] = {}
    last = getattr(checkpoint_callback, "last_model_path", "")
    if last:
        candidates[last] = (getattr(checkpoint_callback, "current_score", None), "latest")
    best = getattr(checkpoint_callback, "best_model_path", "")
    if best:
        candidates[best] = (getattr(checkpoint_callback, "best_model_score", None), "best")
    for path, score in (getattr(checkpoint_callback, "best_k_models", None) or {}).items():
        candidates[path] = (score, "best_k")
    settings = {k: getattr(checkpoint_callback, k) for k in _CALLBACK_SETTINGS if hasattr(checkpoint_callback, k)}
    records = []
    for path, (score, tag) in candidates.items():
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue  # removed already, or on a remote file system: nothing local to upload
        if not os.path.isfile(path):
            continue
        if path in logged and logged[path] >= mtime:
            continue
        records.append(_CheckpointRecord(path, mtime, _to_float(score), tag, path == best, dict(settings)))
    records.sort(key=lambda r: (r.mtime, r.path))
    return records


class _BackgroundUploader:
    """Run upload jobs one after another on a daemon worker thread, in the order they were submitted.

    :meth:`snapshot` takes a hard link of a checkpoint into a private temporary directory next to it, so the
    upload reads the file as it was saved even if ``ModelCheckpoint`` deletes or replaces it meanwhile (it writes
    checkpoints to a new file and renames it over the old one, which leaves a linked inode untouched). Where a hard
    link is impossible (another file system, Windows without permission) it falls back to a copy.

    A job that raises is logged and remembered; :meth:`wait` re-reports those errors as a warning once. The worker
    starts on the first :meth:`submit`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` to run on the worker thread."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                fn, args = job
                fn(*args)
            except Exception as ex:  # an upload failing must not kill the worker or the training
                log.warning("%s: an upload failed: %r", self._name, ex, exc_info=True)
                self._errors.append(repr(ex))
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Block until every job submitted so far has finished; warn about the ones that failed."""
        if self._thread is not None:
            self._queue.join()
        if self._errors:
            errors, self._errors = self._errors, []
            rank_zero_warn(f"{self._name}: {len(errors)} upload(s) failed: {'; '.join(errors[:3])}")

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished yet."""
        return self._queue.unfinished_tasks

    @staticmethod
    def snapshot(path: str) -> tuple[str, str]:
        """Hard-link (or copy) ``path`` into a new temporary directory beside it; returns ``(directory, file)``.

        The file keeps its name. Remove the directory with :meth:`discard` once the upload is done.
        """
        real = os.path.realpath(path)  # a `save_last="link"` checkpoint is a symlink: snapshot its target
        parent = os.path.dirname(real)
        try:
            directory = tempfile.mkdtemp(prefix=".featherlight-upload-", dir=parent)
        except OSError:
            directory = tempfile.mkdtemp(prefix="featherlight-upload-")
        target = os.path.join(directory, os.path.basename(path))
        try:
            os.link(real, target)
        except OSError:
            shutil.copyfile(real, target)
        return directory, target

    @staticmethod
    def discard(directory: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:
        # a pickled logger (ddp_spawn) starts with an idle uploader of its own
        return {"_name": self._name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_name"])  # type: ignore[misc]
