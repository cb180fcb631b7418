"""Crash-safe file writing."""
from __future__ import annotations

import os
import uuid
from typing import IO, Callable, Union

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
