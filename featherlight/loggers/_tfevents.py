"""A small, synchronous writer of TensorBoard event files holding scalar summaries.

``torch.utils.tensorboard.SummaryWriter.add_scalar`` builds one event per scalar and hands each to a background
thread that wakes up per event and competes with the training thread for the GIL. :class:`ScalarEventWriter` writes
the same files for the one thing a training loop logs constantly, scalars, without that thread: it puts all the values
of one call into a single event, queues the events in memory, and serializes, frames and writes them in batches from
the calling thread.

The encoding and the framing are the ``tensorboard`` package's own: events are ``tensorboard.compat.proto.event_pb2``
messages and records are framed and checksummed (masked CRC-32C) by its ``RecordWriter``; with only ``tensorboardX``
installed, its copies of both are used. ``benchmarks/bench_tensorboard.py`` (c) measured the hand-written protobuf
encoder and CRC-32C this module used to have against them: a few microseconds per log call, once per
``log_every_n_steps`` steps, which is no real cost, so the library's are used. They are imported at the first
write-out, not when this module is imported.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Union

__all__ = ["ScalarEventWriter", "encode_scalar_event", "frame_record"]

FILE_VERSION = "brain.Event:2"
_FLOAT32_MAX = 3.4028234663852886e38

_library: Optional[tuple[Any, Any, Callable[[Any], Any]]] = None  # (Event, Summary, RecordWriter), on first use


def _lib() -> tuple[Any, Any, Callable[[Any], Any]]:
    """``(Event, Summary, RecordWriter)`` from ``tensorboard``, else from ``tensorboardX``."""
    global _library
    if _library is None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            try:
                from tensorboardX.proto.event_pb2 import Event  # type: ignore[no-redef]
                from tensorboardX.proto.summary_pb2 import Summary  # type: ignore[no-redef]
                from tensorboardX.record_writer import RecordWriter  # type: ignore[no-redef]
            except ImportError:
                raise ModuleNotFoundError(
                    "Writing TensorBoard event files needs `tensorboard`: run `pip install tensorboard`"
                    " (or `pip install tensorboardX`)."
                ) from None
        _library = (Event, Summary, RecordWriter)
    return _library


def frame_record(data: bytes) -> bytes:
    """``data`` as one TFRecord (length, masked CRC-32C of the length, data, masked CRC-32C of the data), framed by
    the library's ``RecordWriter``."""
    out = io.BytesIO()
    _lib()[2](out).write(data)
    return out.getvalue()


def _f32(value: float) -> float:
    # beyond float32's range protobuf would refuse the value; TensorBoard's own path stores +-inf
    if value > _FLOAT32_MAX or value < -_FLOAT32_MAX:
        return math.copysign(math.inf, value)
    return value


def encode_scalar_event(values: Mapping[str, float], step: int, wall_time: float) -> bytes:
    """Serialize ``Event{wall_time, step, summary: Summary{value: [Value{tag, simple_value}, ...]}}``."""
    return _encode_event(wall_time, step, values.items())


def _encode_event(wall_time: float, step: int, items: Iterable[tuple[str, float]]) -> bytes:
    event_cls, summary_cls, _ = _lib()
    summary = summary_cls(value=[summary_cls.Value(tag=str(tag), simple_value=_f32(value)) for tag, value in items])
    return event_cls(wall_time=wall_time, step=step, summary=summary).SerializeToString()


def _encode_version_event(wall_time: float) -> bytes:
    return _lib()[0](wall_time=wall_time, file_version=FILE_VERSION).SerializeToString()


# A pending event: ``(wall_time, None, None)`` for the file's version event, else ``(wall_time, step, [(tag, float),
# ...])``; encoded when written out.
_Pending = tuple[float, Optional[int], Optional[list[tuple[str, float]]]]


def _write_out(file: Any, pending: list[_Pending], owner_pid: int) -> None:
    """Encode and frame the ``pending`` events, write them to ``file`` and flush it (never from a forked child: its
    copy of ``pending`` is the parent's data)."""
    if os.getpid() != owner_pid:
        return
    if pending:
        events = pending[:]
        del pending[: len(events)]
        out = io.BytesIO()
        records = _lib()[2](out)
        for wall_time, step, items in events:
            records.write(_encode_version_event(wall_time) if items is None else _encode_event(wall_time, step, items))
        file.write(out.getvalue())
    file.flush()


def _write_out_and_close(file: Any, pending: list[_Pending], owner_pid: int) -> None:
    try:
        _write_out(file, pending, owner_pid)
    finally:
        if os.getpid() == owner_pid:
            file.close()


_file_ids = itertools.count()


class ScalarEventWriter:
    """Append scalar summaries to a TensorBoard event file in ``log_dir``, synchronously (no background thread).

    The file, ``events.out.tfevents.<time>.<host>.<pid>.scalars<n><filename_suffix>``, is created on the first
    :meth:`write_scalars`, so nothing logged means no file. (``SummaryWriter`` names its files ``...<pid>.<n>``, so
    the two never collide, and a file of this writer sorts after a ``SummaryWriter`` file created in the same
    second.)

    :meth:`write_scalars` only converts the values to ``float`` and queues them; events are serialized, framed and
    written at the first write, at a write more than ``flush_secs`` after the previous write-out, when more than
    ``max_pending`` events wait, on :meth:`flush` and :meth:`close`, and at interpreter exit. Doing that work in
    batches rather than between training steps, when the CPU caches hold the training step's data instead of this
    code's, makes it several times cheaper. After :meth:`close`, the next write starts a new file.

    Args:
        log_dir: Directory of the event file; created if missing.
        flush_secs: Write pending events out at a write this many seconds after the previous write-out
            (TensorBoard's ``SummaryWriter`` default is 120).
        filename_suffix: Appended to the file name.
        max_pending: Write out as soon as more than this many events wait.
    """

    def __init__(
        self,
        log_dir: Union[str, os.PathLike],
        flush_secs: float = 120.0,
        filename_suffix: str = "",
        max_pending: int = 1000,
    ) -> None:
        self.log_dir = os.fspath(log_dir)
        self.flush_secs = float(flush_secs)
        self.filename_suffix = filename_suffix
        self.max_pending = max_pending
        self._file: Optional[Any] = None
        self._path: Optional[str] = None
        self._pending: list[_Pending] = []
        self._last_write_out = 0.0  # time.monotonic() of the last write-out
        self._finalizer: Optional[weakref.finalize] = None

    @property
    def path(self) -> Optional[str]:
        """The current (or last) event file; ``None`` before the first write."""
        return self._path

    def write_scalars(
        self, values: Mapping[str, Any], step: Optional[int] = None, wall_time: Optional[float] = None
    ) -> None:
        """Append one event holding every ``tag -> number`` of ``values`` (stored as float32) at ``step``.

        ``wall_time`` defaults to ``time.time()``; ``step=None`` is step 0. An empty ``values`` writes nothing; a
        value ``float()`` rejects raises here and nothing of the call is written.
        """
        if not values:
            return
        items = [(tag, value if type(value) is float else float(value)) for tag, value in values.items()]
        if wall_time is None:
            wall_time = time.time()
        if self._file is None:
            self._open(wall_time)
        pending = self._pending
        pending.append((wall_time, 0 if step is None else int(step), items))
        now = time.monotonic()
        if now - self._last_write_out > self.flush_secs or len(pending) > self.max_pending:
            _write_out(self._file, pending, os.getpid())
            self._last_write_out = now

    def flush(self) -> None:
        """Write every pending event to the file (a no-op before the first write or after :meth:`close`)."""
        if self._file is not None:
            _write_out(self._file, self._pending, os.getpid())
            self._last_write_out = time.monotonic()

    def close(self) -> None:
        """Flush and close the file; a later write opens a new one."""
        if self._file is None:
            return
        finalizer, self._finalizer, self._file = self._finalizer, None, None
        if finalizer is not None:
            finalizer()  # writes out, closes, and unregisters the exit hook

    def _open(self, wall_time: float) -> None:
        import socket

        os.makedirs(self.log_dir, exist_ok=True)
        prefix = f"events.out.tfevents.{int(wall_time):010d}.{socket.gethostname()}.{os.getpid()}.scalars"
        while True:
            path = os.path.join(self.log_dir, f"{prefix}{next(_file_ids)}{self.filename_suffix}")
            try:
                file = open(path, "xb")  # noqa: SIM115 - closed by close() or the finalizer
            except FileExistsError:
                continue
            break
        self._file, self._path = file, path
        self._pending.append((wall_time, None, None))
        self._last_write_out = float("-inf")  # the first write goes out at once: the run shows up right away
        # Writes out what is pending at interpreter exit or when the writer is garbage collected; holds no
        # reference to ``self``.
        self._finalizer = weakref.finalize(self, _write_out_and_close, file, self._pending, os.getpid())

    def __getstate__(self) -> dict[str, Any]:
        # a copy starts a new file of its own on its first write
        state = self.__dict__.copy()
        state.update(_file=None, _path=None, _pending=[], _last_write_out=0.0, _finalizer=None)
        return state
