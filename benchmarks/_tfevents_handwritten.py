"""The hand-written TensorBoard event encoder and CRC-32C that featherlight.loggers._tfevents used until the library's
replaced them (taken from featherlight at commit a240ce1); kept here only so that benchmarks/bench_tensorboard.py (c)
can measure them against the library.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
import weakref
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Union

__all__ = ["ScalarEventWriter", "crc32c", "masked_crc32c", "encode_scalar_event", "frame_record"]

_CASTAGNOLI = 0x82F63B78  # CRC-32C polynomial, bit-reflected
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
FILE_VERSION = "brain.Event:2"

_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack
_pack_u32 = struct.Struct("<I").pack
_pack_u64 = struct.Struct("<Q").pack
_FLOAT_INF = _pack_float(float("inf"))
_FLOAT_NEG_INF = _pack_float(float("-inf"))

_table: Optional[tuple[int, ...]] = None  # CRC-32C of each byte value; built on the first checksum, not at import


def _crc_table() -> tuple[int, ...]:
    global _table
    if _table is None:
        table = []
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
            table.append(crc)
        _table = tuple(table)
    return _table


def crc32c(data: Union[bytes, bytearray, memoryview], crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; pass a previous result as ``crc`` to continue it over more data.

    Pure Python, one table lookup per byte: neither the standard library (``zlib``/``binascii`` only have the IEEE
    CRC-32) nor featherlight's dependencies offer CRC-32C. About 0.1 us a byte; a log call's event is ~50 bytes.
    (Eight bytes per iteration with eight tables, "slicing-by-8", measured ~20% faster on such inputs with warm CPU
    caches but about half as fast with cold ones, as between training steps: not worth its 2048-entry tables.)
    """
    table = _table or _crc_table()
    crc ^= _U32
    for byte in data if not isinstance(data, memoryview) else data.cast("B"):
        crc = table[(crc & 0xFF) ^ byte] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: Union[bytes, bytearray, memoryview]) -> int:
    """The CRC-32C of ``data`` masked as TFRecord stores it."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


_record_heads: dict[int, bytes] = {}  # data length -> length field + its masked CRC (event sizes repeat)


def frame_record(data: bytes) -> bytes:
    """Wrap ``data`` in a TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    size = len(data)
    head = _record_heads.get(size)
    if head is None:
        length = _pack_u64(size)
        head = length + _pack_u32(masked_crc32c(length))
        if len(_record_heads) < 4096:
            _record_heads[size] = head
    return head + data + _pack_u32(masked_crc32c(data))


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 is written as its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_value_heads: dict[str, bytes] = {}  # tag -> the bytes of its Summary.value entry before the float


def _value_head(tag: str) -> bytes:
    head = _value_heads.get(tag)
    if head is None:
        name = str(tag).encode("utf-8")
        # Value { tag (field 1, length-delimited), simple_value (field 2, fixed32) }
        value = b"\x0a" + _varint(len(name)) + name + b"\x15"
        # Summary.value (field 1, length-delimited); the 4 float bytes follow
        head = b"\x0a" + _varint(len(value) + 4) + value
        if len(_value_heads) >= 10_000:  # tags that never repeat must not grow this without bound
            _value_heads.clear()
        _value_heads[tag] = head
    return head


def encode_scalar_event(values: Mapping[str, float], step: int, wall_time: float) -> bytes:
    """Serialize ``Event{wall_time, step, summary: Summary{value: [Value{tag, simple_value}, ...]}}``.

    Fields come in field-number order and a zero ``step`` is left out, as protobuf itself serializes it.
    """
    return _encode_event(wall_time, step, values.items())


def _encode_event(wall_time: float, step: int, items: Iterable[tuple[str, float]]) -> bytes:
    heads = _value_heads
    parts = []
    for tag, value in items:
        head = heads.get(tag) or _value_head(tag)
        try:
            parts.append(head + _pack_float(value))
        except OverflowError:  # beyond float32's range: TensorBoard's protobuf path stores +-inf as well
            parts.append(head + (_FLOAT_INF if value > 0 else _FLOAT_NEG_INF))
    body = b"".join(parts)
    step_field = b"\x10" + _varint(step) if step else b""
    return b"\x09" + _pack_double(wall_time) + step_field + b"\x2a" + _varint(len(body)) + body


def _encode_version_event(wall_time: float) -> bytes:
    version = FILE_VERSION.encode("ascii")
    return b"\x09" + _pack_double(wall_time) + b"\x1a" + _varint(len(version)) + version


# A pending event: its serialized bytes, or ``(wall_time, step, [(tag, float), ...])`` still to be encoded.
_Pending = Union[bytes, tuple[float, int, list[tuple[str, float]]]]


def _write_out(file: Any, pending: list[_Pending], owner_pid: int) -> None:
    """Encode and frame the ``pending`` events, write them to ``file`` and flush it (never from a forked child: its
    copy of ``pending`` is the parent's data)."""
    if os.getpid() != owner_pid:
        return
    if pending:
        events = pending[:]
        del pending[: len(events)]
        file.write(
            b"".join([frame_record(event if type(event) is bytes else _encode_event(*event)) for event in events])
        )
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

    :meth:`write_scalars` only converts the values to ``float`` and queues them; events are encoded, checksummed and
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
        self._pending.append(_encode_version_event(wall_time))
        self._last_write_out = float("-inf")  # the first write goes out at once: the run shows up right away
        # Writes out what is pending at interpreter exit or when the writer is garbage collected; holds no
        # reference to ``self``.
        self._finalizer = weakref.finalize(self, _write_out_and_close, file, self._pending, os.getpid())

    def __getstate__(self) -> dict[str, Any]:
        # a copy starts a new file of its own on its first write
        state = self.__dict__.copy()
        state.update(_file=None, _path=None, _pending=[], _last_write_out=0.0, _finalizer=None)
        return state
