"""Crash-safe file writing: a reader sees the old file or the complete new one, never a torn write.

``atomic_write`` is the one way featherlight writes files that must survive a crash (checkpoints, exported
weights); ``atomic_torch_save`` is ``torch.save`` through it, reporting a full disk by the checkpoint's name.
"""
from __future__ import annotations

import os
import uuid
from typing import IO, Any, Callable, Optional, Union

import torch

_PATH = Union[str, "os.PathLike[str]"]


def atomic_write(path: _PATH, write_fn: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` so that readers see either the old file or the complete new one, never a torn write.

    ``write_fn(fileobj)`` writes the content into a binary temporary file created in the destination's
    directory; the file is then flushed, fsynced and renamed over ``path`` with :func:`os.replace` (atomic on
    POSIX and Windows), and the directory entry is fsynced where the platform allows. If ``write_fn`` or any
    step raises, the temporary file is removed and the exception propagates; ``path`` is left untouched.
    The new file gets the usual permissions (``0o666`` minus the umask), like a plain ``open(path, "wb")``.
    Local filesystem paths only.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with mode 0o666 lets the umask apply; tempfile.mkstemp would leave the result 0o600.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself; best effort (not possible on Windows or some filesystems)."""
    if os.name != "posix":
        return
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class _WritebackStream:
    """A binary file wrapper that asks the kernel to start writing each ``chunk`` to disk as soon as it is
    written (``posix_fadvise(DONTNEED)`` starts writeback of dirty pages without waiting for it), so the
    final ``fsync`` of an atomic write overlaps with serialising the rest instead of following it.

    Only a hint: the data is as durable as before (the fsync still decides), and on platforms without
    ``posix_fadvise`` this is a plain pass-through.
    """

    _CHUNK = 16 << 20

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._written = 0
        self._started = 0
        try:
            self._fd: Optional[int] = f.fileno() if hasattr(os, "posix_fadvise") else None
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._written += n
        if self._fd is not None and self._written - self._started >= self._CHUNK:
            self._f.flush()
            try:
                os.posix_fadvise(self._fd, self._started, self._written - self._started, os.POSIX_FADV_DONTNEED)
            except OSError:
                self._fd = None  # a filesystem that does not take the hint
            self._started = self._written
        return n

    def flush(self) -> None:
        self._f.flush()


def atomic_torch_save(obj: Any, filepath: _PATH) -> None:
    """``torch.save(obj)`` to ``filepath`` through :func:`atomic_write`; parent directories are created.

    ``filepath`` may also be an fsspec URL (``s3://``, ``gs://``, ``memory://``...): the object is serialised in
    memory first and written in one piece (object stores publish an object only once its upload completes, so a
    reader never sees a partial checkpoint there either).
    """

    filepath = os.fspath(filepath)
    from featherlight.io.paths import is_remote

    if is_remote(filepath):
        _remote_torch_save(obj, filepath)
        return
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    try:
        atomic_write(filepath, lambda f: torch.save(obj, _WritebackStream(f)))
    except Exception as err:
        # A full disk surfaces as an OSError from a write, or as torch's zip writer failing to finish the file
        # with that OSError as its context: report the OSError, naming the checkpoint (not the temporary file).
        cause: Optional[BaseException] = err
        while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
            cause = cause.__context__
        if cause is None:
            raise
        assert isinstance(cause, OSError)
        raise OSError(cause.errno, f"{cause.strerror or cause} while writing the checkpoint (any previous file at "
                                   "this path is left as it was)", filepath) from err


def _remote_torch_save(obj: Any, url: str) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise first: a failure here leaves nothing behind at the destination
    write_bytes(url, buffer.getvalue())


def write_bytes(path: _PATH, data: bytes) -> None:
    """Write ``data`` to ``path`` whole: a local path through :func:`atomic_write`; an fsspec URL in one write
    (object stores publish an object only once it is complete). Parent directories are created."""
    path = os.fspath(path)
    from featherlight.io.paths import get_filesystem, is_remote

    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
        return
    fs = get_filesystem(path)
    parent = path.rsplit("/", 1)[0]
    if "://" in parent and parent.split("://", 1)[1]:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)
