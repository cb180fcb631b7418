"""Checkpoints written in the background (``ModelCheckpoint(async_save=True)``, ``Trainer(plugins=[AsyncCheckpointIO()])``)
keep the guarantees of synchronous ones: the file holds the state at the save; ``best_model_path``, ``last.ckpt``,
the removal of older files and loggers follow only once the new file is complete; one write at a time; ``fit``
returns after the last write; a failed write raises in the training process, naming the file; a process killed
mid-write keeps its previous checkpoints, and resuming from them is exact."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import pytest
import torch

import featherlight as fl
from featherlight.callbacks import Callback, ModelCheckpoint
from featherlight.loggers.logger import Logger
from featherlight.plugins import AsyncCheckpointIO, TorchCheckpointIO
from featherlight.utilities.exceptions import CheckpointError

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
sys.path.insert(0, SCRIPTS)

import async_checkpoint_fit as script  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")

MODES = ["async_save", "plugin"]


def _load(path):
    return torch.load(path, weights_only=True)


def _files(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith(".")) if os.path.isdir(directory) else []


def _assert_same_state(a, b):
    """Weights, optimizer state and position of two checkpoints are bitwise equal."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for i in sa["state"]:
            for k, v in sa["state"][i].items():
                assert torch.equal(v, sb["state"][i][k]), (i, k)


class GatedIO(TorchCheckpointIO):
    """The default plugin, whose writes each wait for a permit from the test, and which records what it does."""

    def __init__(self):
        self.permits = threading.Semaphore(0)
        self.events = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        assert self.permits.acquire(timeout=60), "the test never let the write go"
        name = os.path.basename(os.fspath(path))
        self.events.append(("start", name))
        super().save_checkpoint(checkpoint, path, storage_options)
        self.events.append(("end", name))


class RecordingLogger(Logger):
    def __init__(self):
        super().__init__()
        self.saved = []  # (global_step, best_model_path) at each after_save_checkpoint

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def after_save_checkpoint(self, checkpoint_callback):
        self.saved.append((self.trainer_step, os.path.basename(checkpoint_callback.best_model_path)))


def _trainer(tmp_path, mode, io, callbacks=(), **kwargs):
    plugins = [AsyncCheckpointIO(io)] if mode == "plugin" else [io]
    flags = dict(max_steps=8, limit_val_batches=0, logger=False, enable_progress_bar=False,
                 enable_model_summary=False, default_root_dir=tmp_path, plugins=plugins, callbacks=list(callbacks))
    flags.update(kwargs)
    return fl.Trainer(**flags)


def _checkpoint(tmp_path, mode, **kwargs):
    args = dict(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=1, save_last=True,
                async_save=mode == "async_save")
    args.update(kwargs)
    return ModelCheckpoint(**args)


# ---------------------------------------------------------------------------------------------- bookkeeping
class Probe(Callback):
    """At each batch start: what the checkpoint callback says and which files exist; lets writes go at given steps."""

    def __init__(self, io, directory, logger, release):
        self.io, self.directory, self.logger, self.release = io, directory, logger, release
        self.seen = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        cb = trainer.checkpoint_callback
        step = trainer.global_step
        self.logger.trainer_step = step
        link = os.path.join(self.directory, "last.ckpt")
        self.seen[step] = dict(
            best=os.path.basename(cb.best_model_path), last=os.path.basename(cb.last_model_path),
            files=_files(self.directory),
            link=os.readlink(link) if os.path.islink(link) else None, logged=len(self.logger.saved),
        )
        for _ in range(self.release.get(step, 0)):
            self.io.permits.release()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("save_last", [True, "link"])
def test_bookkeeping_changes_only_once_the_new_file_is_complete(tmp_path, mode, save_last):
    io = GatedIO()
    directory = str(tmp_path / "ckpts")
    logger = RecordingLogger()
    logger.trainer_step = 0
    files_per_save = 2 if save_last is True else 1  # the checkpoint, and last.ckpt unless it is a link
    # each save's writes are let go two steps after it: at steps 3, 5 and 7 (and every later write at step 7)
    probe = Probe(io, directory, logger, {3: files_per_save, 5: files_per_save, 7: 100})
    cb = _checkpoint(tmp_path, mode, save_last=save_last)
    trainer = _trainer(tmp_path, mode, io, callbacks=[probe, cb], logger=logger)
    trainer.fit(script.Net())
    seen = probe.seen
    step2, step4, step6 = "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"
    # saved at step 2, not written yet: nothing is published, nothing on disk, loggers not told
    for step in (2, 3):
        assert seen[step]["best"] == seen[step]["last"] == ""
        assert seen[step]["files"] == [] and seen[step]["logged"] == 0
    # step 4's save found step 2's files complete: they are published; step 4's own are not
    for step in (4, 5):
        assert seen[step]["best"] == step2
        assert seen[step]["last"] == "last.ckpt"
        assert step2 in seen[step]["files"] and step4 not in seen[step]["files"]  # not pruned before step 4 exists
        assert seen[step]["logged"] == files_per_save
        if save_last == "link":
            assert seen[step]["link"] == step2
        else:
            assert _load(os.path.join(directory, "last.ckpt"))["global_step"] >= 2
    assert seen[6]["best"] == step4
    if save_last == "link":
        assert seen[6]["link"] == step4
    # after fit: everything written and published, older files pruned
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=8.ckpt"
    assert _files(directory) == ["epoch=0-step=8.ckpt", "last.ckpt"]
    assert _load(os.path.join(directory, "last.ckpt"))["global_step"] == 8
    assert logger.saved[-1][1] == "epoch=0-step=8.ckpt"
    # one write at a time, in the order of the saves
    starts_ends = [kind for kind, _ in io.events]
    assert starts_ends == ["start", "end"] * (len(io.events) // 2)
    names = [name for kind, name in io.events if kind == "start"]
    expected = [step2, "last.ckpt", step4, "last.ckpt", step6, "last.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]
    assert names == (expected if save_last is True else expected[::2])
    del step6


@pytest.mark.parametrize("mode", MODES)
def test_async_fit_writes_what_a_synchronous_fit_writes(tmp_path, mode):
    """Same files, same contents (weights, optimizer, position), same bookkeeping, with a monitored top 2."""

    class Logged(script.Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            return loss

    results = {}
    for name in ("sync", mode):
        fl.seed_everything(0)
        kwargs = dict(dirpath=tmp_path / name, monitor="loss", save_top_k=2, save_last=True, every_n_train_steps=1)
        if name == "async_save":
            kwargs["async_save"] = True
        cb = ModelCheckpoint(**kwargs)
        plugins = [AsyncCheckpointIO()] if name == "plugin" else []
        fl.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[cb], plugins=plugins).fit(Logged())
        results[name] = cb
    sync, other = results["sync"], results[mode]
    assert _files(tmp_path / "sync") == _files(tmp_path / mode)
    assert os.path.basename(sync.best_model_path) == os.path.basename(other.best_model_path)
    assert sorted(map(os.path.basename, sync.best_k_models)) == sorted(map(os.path.basename, other.best_k_models))
    assert float(sync.best_model_score) == float(other.best_model_score)
    for f in _files(tmp_path / "sync"):
        _assert_same_state(_load(tmp_path / "sync" / f), _load(tmp_path / mode / f))


@pytest.mark.parametrize("mode", MODES)
def test_the_file_holds_the_state_at_the_save_while_training_goes_on(tmp_path, mode):
    """Step 2's write waits until a step later (the save at step 4 waits for it): the weights and optimizer state it
    writes are still step 2's, bitwise."""
    fl.seed_everything(0)
    sync = ModelCheckpoint(dirpath=tmp_path / "sync", every_n_train_steps=2, save_top_k=-1)
    fl.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[sync]).fit(script.Net())

    fl.seed_everything(0)
    io = GatedIO()
    probe = Probe(io, str(tmp_path / "async"), RecordingLogger(), {3: 100})
    cb = _checkpoint(tmp_path, mode, dirpath=tmp_path / "async", save_top_k=-1, save_last=False)
    _trainer(tmp_path, mode, io, callbacks=[probe, cb], max_steps=6).fit(script.Net())
    assert _files(tmp_path / "async") == _files(tmp_path / "sync") == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"]
    for f in _files(tmp_path / "sync"):
        _assert_same_state(_load(tmp_path / "sync" / f), _load(tmp_path / "async" / f))


@pytest.mark.parametrize("mode", MODES)
def test_fit_returns_only_after_the_last_write(tmp_path, mode):
    io = GatedIO()
    release = threading.Timer(0.5, lambda: [io.permits.release() for _ in range(100)])
    io.permits.release(6)  # steps 2, 4 and 6 (checkpoint and last.ckpt); step 8's wait for the timer
    release.start()
    try:
        _trainer(tmp_path, mode, io, callbacks=[_checkpoint(tmp_path, mode)]).fit(script.Net())
    finally:
        release.cancel()
    assert io.events[-1] == ("end", "last.ckpt")
    assert _files(tmp_path / "ckpts") == ["epoch=0-step=8.ckpt", "last.ckpt"]
    assert _load(tmp_path / "ckpts" / "last.ckpt")["global_step"] == 8


# ---------------------------------------------------------------------------------------------- failures
class FullDiskIO(TorchCheckpointIO):
    """The disk fills up after ``room`` files: later writes fail like a full disk, leaving nothing behind."""

    def __init__(self, room):
        self.room = room

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        self.room -= 1
        super().save_checkpoint(checkpoint, path, storage_options)


class StepAtFailure(Callback):
    def on_exception(self, trainer, pl_module, exception):
        self.step = trainer.global_step


@pytest.mark.parametrize("mode", MODES)
def test_failed_write_raises_at_the_next_save_and_keeps_the_previous_files(tmp_path, mode):
    io = FullDiskIO(room=2)  # step 2's checkpoint and last.ckpt fit; step 4's do not
    cb = _checkpoint(tmp_path, mode)
    at = StepAtFailure()
    trainer = _trainer(tmp_path, mode, io, callbacks=[at, cb])
    with pytest.raises(CheckpointError, match=r"epoch=0-step=4\.ckpt.*No space left on device") as info:
        trainer.fit(script.Net())
    assert isinstance(info.value.__cause__, OSError)
    assert at.step == 6  # raised by the next save, in the training process
    assert _files(tmp_path / "ckpts") == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert _load(tmp_path / "ckpts" / "last.ckpt")["global_step"] == 2
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=2.ckpt"  # still describes the files on disk
    assert os.path.basename(cb.last_model_path) == "last.ckpt"


@pytest.mark.parametrize("mode", MODES)
def test_failed_last_write_raises_at_the_end_of_fit(tmp_path, mode):
    io = FullDiskIO(room=7)  # the last file of the run (step 8's last.ckpt) does not fit
    cb = _checkpoint(tmp_path, mode)
    trainer = _trainer(tmp_path, mode, io, callbacks=[cb])
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*No space left on device"):
        trainer.fit(script.Net())
    assert trainer.global_step == 8
    assert _load(tmp_path / "ckpts" / "last.ckpt")["global_step"] == 6
    # step 8's checkpoint is complete, but what the callback says stays with the set that was completely written
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=6.ckpt"
    assert "epoch=0-step=6.ckpt" in _files(tmp_path / "ckpts")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Needs root and a kernel that lets us mount (skipped elsewhere)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


class Wide(script.Net):
    """About 600 KB of weights: one checkpoint fits on the 1 MiB disk, a second one beside it does not."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Linear(1000, 150)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-2)


def test_real_full_disk_during_a_background_write_raises_in_fit(tmp_path, small_disk):
    cb = ModelCheckpoint(dirpath=small_disk, every_n_train_steps=2, save_top_k=1, async_save=True)
    trainer = fl.Trainer(max_steps=8, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb])
    with pytest.raises(CheckpointError, match=r"epoch=0-step=4\.ckpt.*No space left on device") as info:
        trainer.fit(Wide())
    assert info.value.__cause__.errno == errno.ENOSPC
    assert os.listdir(small_disk) == ["epoch=0-step=2.ckpt"]  # the temporary file is gone too
    assert _load(small_disk / "epoch=0-step=2.ckpt")["global_step"] == 2
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=2.ckpt"


# ---------------------------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stall", ["epoch=0-step=", "last"], ids=["during-checkpoint", "during-last"])
def test_kill_during_a_background_write_keeps_the_previous_checkpoints_and_resumes_exactly(tmp_path, mode, stall):
    """SIGKILL while step 4's files are being written (the checkpoint, or last.ckpt after it): step 2's files are
    intact, and resuming from last.ckpt ends with the weights of an uninterrupted run, bitwise."""
    marker = tmp_path / "stalled"
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "async_checkpoint_fit.py"), str(tmp_path), mode,
                             stall], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-4000:]
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()  # SIGKILL, in the middle of the write
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    directory = tmp_path / "ckpts"
    files = _files(directory)
    last = _load(directory / "last.ckpt")
    assert last["global_step"] == 2  # the previous last.ckpt, intact
    assert "epoch=0-step=2.ckpt" in files  # not pruned: its successor was never published
    assert _load(directory / "epoch=0-step=2.ckpt")["global_step"] == 2
    if stall == "last":  # step 4's checkpoint was complete before last.ckpt's write began
        assert files == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
        assert _load(directory / "epoch=0-step=4.ckpt")["global_step"] == 4
    else:
        assert files == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert any(f.endswith(".tmp") for f in os.listdir(directory))  # the write really was cut off half-way

    fl.seed_everything(0)
    reference = script.Net()
    script.trainer(tmp_path / "reference", mode="sync").fit(reference)
    fl.seed_everything(0)
    resumed = script.Net()
    script.trainer(tmp_path / "resumed", mode=mode).fit(resumed, ckpt_path=directory / "last.ckpt")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- the handle
def test_trainer_save_checkpoint_in_background_returns_a_handle(tmp_path):
    trainer = fl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    model = script.Net()
    trainer.fit(model)
    pending = trainer.save_checkpoint(tmp_path / "a.ckpt", background=True, copies=[tmp_path / "b.ckpt"])
    assert pending.paths == (str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # changes after the save do not reach the file
    pending.wait()
    assert pending.done() and not pending.failed
    a, b = _load(tmp_path / "a.ckpt"), _load(tmp_path / "b.ckpt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert not torch.equal(a["state_dict"]["net.0.weight"], model.net[0].weight)
    assert trainer.save_checkpoint(tmp_path / "c.ckpt") is None  # a synchronous save: written on return
    assert _load(tmp_path / "c.ckpt")["global_step"] == 2
    trainer.strategy.teardown()


# ---------------------------------------------------------------------------------------------- DDP
def test_ddp_and_fsdp_rank_zero_writes_in_the_background_and_ranks_agree(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(SCRIPTS), "..", "strategies", "scripts"))
    from fl_dist_run import load_ranks, run_script

    code, output, _ = run_script("ddp_async_checkpoint.py", tmp_path, cwd=tmp_path, timeout=240)
    assert code == 0, output[-6000:]
    ranks = load_ranks(tmp_path)
    for name, sync in (("async_save", "sync_link"), ("plugin", "sync"), ("fsdp_full_async", "fsdp_full_sync")):
        zero, one, reference = ranks[0][name], ranks[1][name], ranks[0][sync]
        assert one["writes"] == []  # one-file checkpoints: rank 0 writes
        assert zero["writes"] == reference["writes"]
        # the ranks agree, and agree with a synchronous run
        assert {k: v for k, v in zero.items() if k != "writes"} == {k: v for k, v in one.items() if k != "writes"}
        assert {k: v for k, v in zero.items() if k != "writes"} == {k: v for k, v in reference.items() if k != "writes"}
        assert _files(tmp_path / name) == _files(tmp_path / sync) == sorted(zero["best_k"] + ["last.ckpt"])
        if os.path.islink(tmp_path / sync / "last.ckpt"):
            assert os.readlink(tmp_path / name / "last.ckpt") == os.readlink(tmp_path / sync / "last.ckpt")
        for f in _files(tmp_path / sync):
            _assert_same_state(_load(tmp_path / name / f), _load(tmp_path / sync / f))
        assert not zero["warned_sync"]
    # sharded FSDP checkpoints (directories) are written synchronously, with a warning
    sharded = ranks[0]["fsdp_sharded_async"]
    assert sharded["warned_sync"] and sharded["writes"] == []
    assert _files(tmp_path / "fsdp_sharded_async") == sorted(sharded["best_k"] + ["last.ckpt"])
    assert all((tmp_path / "fsdp_sharded_async" / f / "meta.pt").exists() for f in sharded["best_k"])
