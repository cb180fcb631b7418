"""Checkpoint safety: a failed write never costs the previous checkpoint, a damaged file is a clear
``CheckpointError`` naming it, and loading never runs code from the file unless asked to."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import featherlight as fl
from featherlight.callbacks import ModelCheckpoint
from featherlight.demos.boring_classes import BoringDataModule, BoringModel
from featherlight.utilities.exceptions import CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


def _trainer(tmp_path, **kwargs):
    base = dict(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    base.update(kwargs)
    return fl.Trainer(**base)


@pytest.fixture
def saved(tmp_path):
    """A fitted trainer and a good checkpoint it wrote."""
    trainer = _trainer(tmp_path)
    trainer.fit(BoringModel())
    path = tmp_path / "ckpts" / "model.ckpt"
    trainer.save_checkpoint(path)
    return trainer, path


def _partial_then(exc):
    """A ``torch.save`` that writes the start of a checkpoint, then fails like a crash or a full disk."""

    def fake_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04" + b"\0" * 4096)
        else:
            f.write(b"PK\x03\x04" + b"\0" * 4096)
        raise exc

    return fake_save


# ------------------------------------------------------------------------------------------- (a) writes
@pytest.mark.parametrize("exc", [RuntimeError("killed mid-write"), KeyboardInterrupt(),
                                 OSError(errno.ENOSPC, "No space left on device")], ids=["crash", "ctrl-c", "enospc"])
def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp_file(saved, monkeypatch, exc):
    trainer, path = saved
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_then(exc))
    with pytest.raises(type(exc)) as info:
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.ckpt"]
    assert torch.load(path, weights_only=True)["global_step"] == 4
    if isinstance(exc, OSError):
        assert info.value.errno == errno.ENOSPC
        assert str(path) in str(info.value)  # says which checkpoint could not be written


def test_full_disk_at_fsync_keeps_previous_checkpoint(saved, monkeypatch):
    """Delayed allocation: the data only fails to fit when it is flushed."""
    trainer, path = saved
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left") as info:
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["model.ckpt"]


def test_new_checkpoint_path_left_absent_after_failed_write(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    trainer.fit(BoringModel())
    monkeypatch.setattr(torch, "save", _partial_then(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.save_checkpoint(tmp_path / "new" / "fresh.ckpt")
    assert os.listdir(tmp_path / "new") == []


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is POSIX-only")
def test_writeback_hints_do_not_change_the_file(saved, monkeypatch):
    """Large checkpoints start their way to disk while being written (the final fsync then has less
    to wait for); the bytes are exactly what torch.save writes."""
    from featherlight.io import atomic as atomic_module
    from featherlight.trainer import checkpoint as ckpt_module

    trainer, path = saved
    calls = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(atomic_module._WritebackStream, "_CHUNK", 256)
    monkeypatch.setattr(os, "posix_fadvise", record)
    trainer.save_checkpoint(path)
    assert calls and all(advice == os.POSIX_FADV_DONTNEED for _, _, advice in calls)
    assert [offset for offset, _, _ in calls] == sorted(offset for offset, _, _ in calls)
    reference = io.BytesIO()
    torch.save(ckpt_module._dump_checkpoint(trainer), reference)
    assert path.read_bytes() == reference.getvalue()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Needs root and a kernel that lets us mount (skipped elsewhere)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


class _Wide(BoringModel):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.extra = nn.Linear(32, width)


def test_real_full_disk_keeps_previous_checkpoint(tmp_path, tiny_disk):
    small = _trainer(tmp_path)
    small.fit(_Wide(2))
    path = tiny_disk / "model.ckpt"
    small.save_checkpoint(path)
    before = path.read_bytes()
    big = _trainer(tmp_path)
    big.fit(_Wide(16_000))  # ~2 MB of weights: more than the disk holds
    with pytest.raises(OSError) as info:
        big.save_checkpoint(path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert os.listdir(tiny_disk) == ["model.ckpt"]
    assert _Wide.load_from_checkpoint(path).extra.out_features == 2


def test_model_checkpoint_failure_during_fit_keeps_earlier_files(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpts"
    cb = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    _trainer(tmp_path, callbacks=[cb], enable_checkpointing=True).fit(BoringModel())
    before = {name: (ckpt_dir / name).read_bytes() for name in os.listdir(ckpt_dir)}
    assert "last.ckpt" in before

    monkeypatch.setattr(torch, "save", _partial_then(OSError(errno.ENOSPC, "No space left on device")))
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
                       enable_checkpointing=True)
    with pytest.raises(OSError):
        trainer.fit(BoringModel(), ckpt_path="last")
    monkeypatch.undo()
    assert {name: (ckpt_dir / name).read_bytes() for name in os.listdir(ckpt_dir)} == before


# ------------------------------------------------------------------------------------------- (b) damaged files
def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif how == "flipped":
        middle = len(data) // 2
        path.write_bytes(data[:100] + bytes(255 - b for b in data[100:middle]) + data[middle:])
    elif how == "text":
        path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n")


def _assert_clean_error(info, path):
    err = info.value
    assert str(path) in str(err)
    # no raw unpickling traceback chained under it
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "flipped", "text"])
def test_damaged_checkpoint_gives_checkpoint_error(saved, tmp_path, how):
    _, path = saved
    _damage(path, how)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        _trainer(tmp_path, max_epochs=2).fit(BoringModel(), ckpt_path=path)
    _assert_clean_error(info, path)
    with pytest.raises(CheckpointError) as info:
        BoringModel.load_from_checkpoint(path)
    _assert_clean_error(info, path)
    with pytest.raises(CheckpointError) as info:
        _trainer(tmp_path).validate(BoringModel(), ckpt_path=path)
    _assert_clean_error(info, path)


def test_damaged_datamodule_checkpoint(tmp_path):
    path = tmp_path / "dm.ckpt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="corrupt") as info:
        BoringDataModule.load_from_checkpoint(path)
    _assert_clean_error(info, path)


def test_checkpoint_error_is_a_runtime_error(saved):
    _, path = saved
    _damage(path, "truncated")
    with pytest.raises(RuntimeError):
        BoringModel.load_from_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        BoringModel.load_from_checkpoint(path)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        BoringModel.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        _trainer(tmp_path).fit(BoringModel(), ckpt_path=path)


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        BoringModel.load_from_checkpoint(tmp_path)


def _fit_epochs_with_checkpoints(tmp_path, epochs):
    ckpt_dir = tmp_path / "ckpts"
    cb = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, filename="{epoch}")
    _trainer(tmp_path, max_epochs=epochs, callbacks=[cb], enable_checkpointing=True).fit(BoringModel())
    files = sorted(ckpt_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    for i, f in enumerate(files):  # distinct mtimes, oldest first, whatever the filesystem's resolution
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    return ckpt_dir, files


def test_last_falls_back_to_newest_intact_checkpoint(tmp_path):
    ckpt_dir, files = _fit_epochs_with_checkpoints(tmp_path, 3)
    assert [f.name for f in files] == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    newest, previous = files[-1], files[-2]
    stamp = newest.stat().st_mtime
    _damage(newest, "truncated")
    os.utime(newest, (stamp, stamp))

    seen = {}

    class Probe(BoringModel):
        def on_train_start(self):
            seen["epoch"], seen["step"] = self.current_epoch, self.global_step

    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1)],
                       enable_checkpointing=True)
    with pytest.warns(UserWarning) as record:
        trainer.fit(Probe(), ckpt_path="last")
    messages = " ".join(str(w.message) for w in record)
    assert "epoch=2.ckpt" in messages and "unreadable" in messages
    assert trainer.ckpt_path == str(previous)
    # epoch=1.ckpt was taken at the end of epoch 1: that epoch's end finishes before on_train_start (which sees
    # epoch 2, as in Lightning), then epoch 2 trains
    assert seen == {"epoch": 2, "step": 8}
    assert trainer.global_step == 12 and trainer.current_epoch == 3


def test_last_with_only_damaged_checkpoints_refuses_to_start_over(tmp_path):
    ckpt_dir, files = _fit_epochs_with_checkpoints(tmp_path, 2)
    for f in files:
        _damage(f, "truncated")
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)],
                       enable_checkpointing=True)
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(CheckpointError, match="every checkpoint"):
        trainer.fit(BoringModel(), ckpt_path="last")


def test_last_reads_the_file_once(tmp_path, monkeypatch):
    ckpt_dir, _ = _fit_epochs_with_checkpoints(tmp_path, 1)
    calls = []
    original = torch.load

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)],
             enable_checkpointing=True).fit(BoringModel(), ckpt_path="last")
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------- (c) no code runs
class Custom:
    def __init__(self, value):
        self.value = value


class WithCustomState(BoringModel):
    def on_save_checkpoint(self, checkpoint):
        checkpoint["custom"] = Custom(3)

    def on_load_checkpoint(self, checkpoint):
        self.loaded_custom = checkpoint["custom"]


def test_arbitrary_object_refused_unless_weights_only_false(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit(WithCustomState())
    path = tmp_path / "custom.ckpt"
    trainer.save_checkpoint(path)

    with pytest.raises(CheckpointError, match="weights_only=False") as info:
        WithCustomState.load_from_checkpoint(path)
    assert "Custom" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        _trainer(tmp_path, max_epochs=2).fit(WithCustomState(), ckpt_path=path)

    model = WithCustomState.load_from_checkpoint(path, weights_only=False)
    assert isinstance(model.loaded_custom, Custom) and model.loaded_custom.value == 3
    model = WithCustomState()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, ckpt_path=path, weights_only=False)
    assert model.loaded_custom.value == 3
    assert trainer.global_step == 8


def test_arbitrary_object_in_last_checkpoint_is_not_skipped_as_damaged(tmp_path):
    ckpt_dir = tmp_path / "ckpts"
    _trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)], enable_checkpointing=True).fit(WithCustomState())
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)], enable_checkpointing=True)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        trainer.fit(WithCustomState(), ckpt_path="last")
    model = WithCustomState()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=ckpt_dir)], enable_checkpointing=True)
    trainer.fit(model, ckpt_path="last", weights_only=False)
    assert model.loaded_custom.value == 3


class Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    Evil.marker = str(marker)
    model = BoringModel()
    path = tmp_path / "ckpts" / "evil.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": model.state_dict(), "epoch": 0, "global_step": 0, "evil": Evil()}, path)
    assert not marker.exists()

    with pytest.raises(CheckpointError, match="weights_only=False") as info:
        BoringModel.load_from_checkpoint(path)
    assert "system" in str(info.value)  # names what it refused to call
    with pytest.raises(CheckpointError, match="weights_only=False"):
        _trainer(tmp_path).fit(BoringModel(), ckpt_path=path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        _trainer(tmp_path).test(BoringModel(), ckpt_path=path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        BoringDataModule.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        _trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=path.parent)],
                 enable_checkpointing=True).fit(BoringModel(), ckpt_path="last")
    assert not marker.exists()


class NumpyRNGState(BoringModel):
    def on_save_checkpoint(self, checkpoint):
        checkpoint["np_rng"] = np.random.get_state()
        checkpoint["np_array"] = np.arange(5, dtype=np.float32)
        checkpoint["np_scalar"] = np.float64(0.25)

    def on_load_checkpoint(self, checkpoint):
        np.random.set_state(checkpoint["np_rng"])
        self.loaded = (checkpoint["np_array"], checkpoint["np_scalar"])


def test_numpy_rng_state_loads_with_the_default(tmp_path):
    np.random.seed(123)
    trainer = _trainer(tmp_path)
    trainer.fit(NumpyRNGState())
    path = tmp_path / "np.ckpt"
    trainer.save_checkpoint(path)
    expected = np.random.rand(3)

    np.random.seed(0)
    model = NumpyRNGState.load_from_checkpoint(path)
    np.testing.assert_array_equal(np.random.rand(3), expected)
    np.testing.assert_array_equal(model.loaded[0], np.arange(5, dtype=np.float32))
    assert model.loaded[1] == 0.25

    np.random.seed(0)
    model = NumpyRNGState()
    _trainer(tmp_path, max_epochs=2).fit(model, ckpt_path=path)
    np.testing.assert_array_equal(model.loaded[0], np.arange(5, dtype=np.float32))


def test_pickle_of_missing_class_with_weights_only_false(tmp_path):
    path = tmp_path / "gone.ckpt"
    code = ("import torch\nclass Gone:\n    pass\n"
            f"torch.save({{'state_dict': {{}}, 'x': Gone()}}, {str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        BoringModel.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot be found") as info:
        BoringModel.load_from_checkpoint(path, weights_only=False, strict=False)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------- (d) ckpt_path
def test_missing_ckpt_path(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        _trainer(tmp_path).fit(BoringModel(), ckpt_path=missing)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        _trainer(tmp_path).test(BoringModel(), ckpt_path=missing)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        BoringModel.load_from_checkpoint(missing)


def test_best_without_a_monitored_checkpoint(tmp_path):
    with pytest.raises(ValueError, match='ckpt_path="best"'):
        _trainer(tmp_path).fit(BoringModel(), ckpt_path="best")
    trainer = _trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c", monitor="val_loss")],
                       enable_checkpointing=True)
    with pytest.raises(ValueError, match="not configured to save the best model"):
        trainer.test(BoringModel(), ckpt_path="best")


def test_last_with_nothing_warns_and_starts_fresh(tmp_path):
    trainer = _trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "empty")], enable_checkpointing=True)
    with pytest.warns(UserWarning, match="no last checkpoint"):
        trainer.fit(BoringModel(), ckpt_path="last")
    assert trainer.ckpt_path is None
    assert trainer.global_step == 4 and trainer.current_epoch == 1
