"""featherlight.loggers._tfevents: the synchronous TensorBoard event-file writer for scalars, checked against
tensorboard's own reader, record writer and protobuf messages."""
import math
import os
import pickle
import socket
import struct
import subprocess
import sys

import pytest

from featherlight.loggers import _tfevents
from featherlight.loggers._tfevents import ScalarEventWriter, encode_scalar_event, frame_record

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _tb():
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator


def _accumulator(path):
    acc = _tb()(path, size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _scalars(path, tag):
    return [(e.step, e.value) for e in _accumulator(path).Scalars(tag)]


def _raw_events(path):
    """Every Event of one file, parsed by tensorboard's record reader (which checks both CRCs)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return list(LegacyEventFileLoader(path).Load())


def _event_files(log_dir):
    return sorted(f for f in os.listdir(log_dir) if "tfevents" in f)


# ----------------------------------------------------------------------------------------------- checksums
def test_frame_record_matches_tensorboards_record_writer():
    pytest.importorskip("tensorboard")
    import io

    from tensorboard.summary.writer.record_writer import RecordWriter

    for data in (b"", b"x", os.urandom(57), os.urandom(57), os.urandom(1000)):
        out = io.BytesIO()
        RecordWriter(out).write(data)
        assert frame_record(data) == out.getvalue()


# ----------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize(
    ("values", "step"),
    [
        ({"loss": 0.5}, 0),
        ({"loss": 0.1, "epoch": 3, "lr": 1e-4}, 1),
        ({"a/b": -2.5, "ümlaut ✓": 7.0}, 300),
        ({"x" * 200: 0.0}, 2**40),  # a tag longer than 127 bytes needs a two-byte length
        ({"neg": 1.0}, -5),
    ],
)
def test_event_bytes_equal_protobufs_serialization(values, step):
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2

    wall_time = 1712345678.25
    expected = event_pb2.Event(
        wall_time=wall_time,
        step=step,
        summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        ),
    )
    encoded = encode_scalar_event(values, step, wall_time)
    assert encoded == expected.SerializeToString()
    parsed = event_pb2.Event.FromString(encoded)
    assert parsed.step == step and parsed.wall_time == wall_time
    assert [(v.tag, v.simple_value) for v in parsed.summary.value] == [(k, _f32(v)) for k, v in values.items()]


def test_version_event_bytes_equal_protobufs_serialization():
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2

    expected = event_pb2.Event(wall_time=1712345678.5, file_version="brain.Event:2")
    assert _tfevents._encode_version_event(1712345678.5) == expected.SerializeToString()


def test_out_of_range_and_special_values():
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event.FromString(
        encode_scalar_event({"big": 1e300, "small": -1e300, "nan": float("nan"), "inf": float("inf")}, 1, 1.0)
    )
    got = {v.tag: v.simple_value for v in event.summary.value}
    assert got["big"] == math.inf and got["small"] == -math.inf and got["inf"] == math.inf
    assert math.isnan(got["nan"])


# ----------------------------------------------------------------------------------------------- the writer
def test_round_trip_through_event_accumulator(tmp_path):
    writer = ScalarEventWriter(tmp_path)
    writer.write_scalars({"loss": 0.1, "acc": 0.5, "epoch": 0}, step=0)
    writer.write_scalars({"loss": 0.05, "acc": 0.75, "epoch": 0}, step=50)
    writer.write_scalars({"loss": 1 / 3, "epoch": 1}, step=100)
    writer.close()
    assert _scalars(str(tmp_path), "loss") == [(0, _f32(0.1)), (50, _f32(0.05)), (100, _f32(1 / 3))]
    assert _f32(0.1) != 0.1  # stored as float32, as TensorBoard's simple_value
    assert _scalars(str(tmp_path), "acc") == [(0, 0.5), (50, 0.75)]
    assert _scalars(str(tmp_path), "epoch") == [(0, 0.0), (50, 0.0), (100, 1.0)]


def test_one_event_per_call_after_a_version_event(tmp_path):
    writer = ScalarEventWriter(tmp_path)
    for step in range(4):
        writer.write_scalars({"a": step, "b": 2.0 * step, "c": -1.0}, step=step, wall_time=1000.0 + step)
    writer.close()
    events = _raw_events(writer.path)
    assert events[0].file_version == "brain.Event:2" and events[0].wall_time == 1000.0
    assert not events[0].HasField("summary")
    assert len(events) == 5
    for step, event in enumerate(events[1:]):
        assert event.step == step and event.wall_time == 1000.0 + step
        assert [(v.tag, v.simple_value) for v in event.summary.value] == [("a", step), ("b", 2 * step), ("c", -1)]


def test_no_file_until_something_is_written(tmp_path):
    log_dir = tmp_path / "run"
    writer = ScalarEventWriter(log_dir)
    writer.write_scalars({}, step=0)
    writer.flush()
    writer.close()
    assert writer.path is None
    assert not log_dir.exists()
    writer.write_scalars({"x": 1.0}, step=0)
    assert log_dir.is_dir() and _event_files(log_dir) == [os.path.basename(writer.path)]


def test_file_name(tmp_path, monkeypatch):
    monkeypatch.setattr(_tfevents, "_file_ids", iter(range(10)))
    prefix = f"events.out.tfevents.0000001234.{socket.gethostname()}.{os.getpid()}.scalars"
    (tmp_path / f"{prefix}0.sfx").write_bytes(b"")  # taken: the writer must not overwrite it
    writer = ScalarEventWriter(tmp_path, filename_suffix=".sfx")
    writer.write_scalars({"x": 1.0}, step=0, wall_time=1234.9)
    assert os.path.basename(writer.path) == f"{prefix}1.sfx"
    assert (tmp_path / f"{prefix}0.sfx").read_bytes() == b""


def test_two_writers_in_one_directory_use_two_files(tmp_path):
    first, second = ScalarEventWriter(tmp_path), ScalarEventWriter(tmp_path)
    first.write_scalars({"a": 1.0}, step=1)
    second.write_scalars({"b": 2.0}, step=1)
    first.close()
    second.close()
    assert first.path != second.path and len(_event_files(tmp_path)) == 2
    assert _scalars(str(tmp_path), "a") == [(1, 1.0)] and _scalars(str(tmp_path), "b") == [(1, 2.0)]


def test_buffering_and_flush(tmp_path):
    writer = ScalarEventWriter(tmp_path, flush_secs=3600)
    writer.write_scalars({"x": 0.0}, step=0)  # the first write goes out at once
    size = os.path.getsize(writer.path)
    assert [s for s, _ in _scalars(str(tmp_path), "x")] == [0]
    writer.write_scalars({"x": 1.0}, step=1)
    writer.write_scalars({"x": 2.0}, step=2)
    assert os.path.getsize(writer.path) == size  # buffered
    writer.flush()
    assert [s for s, _ in _scalars(str(tmp_path), "x")] == [0, 1, 2]
    writer.close()


def test_write_out_after_flush_secs(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(_tfevents.time, "monotonic", lambda: clock[0])
    writer = ScalarEventWriter(tmp_path, flush_secs=10)
    writer.write_scalars({"x": 0.0}, step=0)
    size = os.path.getsize(writer.path)
    clock[0] = 110.0  # not more than flush_secs later
    writer.write_scalars({"x": 1.0}, step=1)
    assert os.path.getsize(writer.path) == size
    clock[0] = 110.5
    writer.write_scalars({"x": 2.0}, step=2)
    assert os.path.getsize(writer.path) > size
    assert [s for s, _ in _scalars(str(tmp_path), "x")] == [0, 1, 2]
    writer.close()


def test_write_out_when_too_many_events_wait(tmp_path):
    writer = ScalarEventWriter(tmp_path, flush_secs=3600, max_pending=3)
    writer.write_scalars({"x": 0.0}, step=0)
    size = os.path.getsize(writer.path)
    for step in (1, 2, 3):
        writer.write_scalars({"x": float(step)}, step=step)
    assert os.path.getsize(writer.path) == size
    writer.write_scalars({"x": 4.0}, step=4)  # the fourth pending event
    assert [s for s, _ in _scalars(str(tmp_path), "x")] == [0, 1, 2, 3, 4]
    writer.close()


def test_close_then_write_starts_a_new_file(tmp_path):
    writer = ScalarEventWriter(tmp_path, flush_secs=3600)
    writer.write_scalars({"x": 1.0}, step=0)
    writer.write_scalars({"x": 2.0}, step=1)
    first = writer.path
    writer.close()
    writer.close()  # idempotent
    writer.flush()  # no-op when closed
    writer.write_scalars({"x": 3.0}, step=2)
    writer.close()
    assert writer.path != first and len(_event_files(tmp_path)) == 2
    assert _scalars(str(tmp_path), "x") == [(0, 1.0), (1, 2.0), (2, 3.0)]


def test_pending_records_are_written_at_interpreter_exit(tmp_path):
    _tb()
    code = (
        "from featherlight.loggers._tfevents import ScalarEventWriter\n"
        f"w = ScalarEventWriter({str(tmp_path)!r}, flush_secs=3600)\n"
        "for step in range(3): w.write_scalars({'x': float(step)}, step=step)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_REPO_ROOT)
    assert _scalars(str(tmp_path), "x") == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_pickled_copy_starts_its_own_file(tmp_path):
    writer = ScalarEventWriter(tmp_path, flush_secs=3600)
    writer.write_scalars({"x": 1.0}, step=0)
    writer.write_scalars({"x": 2.0}, step=1)
    clone = pickle.loads(pickle.dumps(writer))
    assert clone.path is None and clone.flush_secs == 3600
    clone.write_scalars({"y": 3.0}, step=2)
    clone.close()
    writer.close()
    assert clone.path != writer.path
    assert _scalars(str(tmp_path), "x") == [(0, 1.0), (1, 2.0)] and _scalars(str(tmp_path), "y") == [(2, 3.0)]


def test_values_are_converted_when_written(tmp_path):
    writer = ScalarEventWriter(tmp_path, flush_secs=3600)
    with pytest.raises(ValueError):
        writer.write_scalars({"ok": 1.0, "bad": "text"}, step=0)
    assert writer.path is None and not os.listdir(tmp_path)  # nothing of the call is written
    values = {"x": 1.0}
    writer.write_scalars(values, step=1)
    writer.write_scalars({"x": 2, "y": True, "z": "0.5"}, step=2)
    values["x"] = 100.0  # a later change of the caller's dict does not change what was logged
    with pytest.raises(TypeError):
        writer.write_scalars({"x": None}, step=3)
    writer.close()
    assert _scalars(str(tmp_path), "x") == [(1, 1.0), (2, 2.0)]
    assert _scalars(str(tmp_path), "y") == [(2, 1.0)] and _scalars(str(tmp_path), "z") == [(2, 0.5)]


def test_importing_does_not_import_tensorboard_or_protobuf():
    code = (
        "import sys; from featherlight.loggers._tfevents import ScalarEventWriter; "
        "print(sorted(m for m in ('tensorboard', 'google.protobuf') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_REPO_ROOT)
    assert "tensorboard" not in run.stdout and "protobuf" not in run.stdout
