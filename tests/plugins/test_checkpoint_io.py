"""Checkpoint IO plugins: the default keeps featherlight's guarantees, custom ones see every save, load and removal
the trainer makes, and the asynchronous one writes on a background thread."""
from __future__ import annotations

import os
import pickle
import threading
import warnings

import pytest
import torch

import featherlight as fl
from featherlight.callbacks import ModelCheckpoint
from featherlight.demos.boring_classes import BoringModel
from featherlight.plugins import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from featherlight.utilities.exceptions import CheckpointError, MisconfigurationException

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


def _trainer(tmp_path, **kwargs):
    base = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path)
    base.update(kwargs)
    return fl.Trainer(**base)


class _Unpicklable:
    pass


class RecordingIO(TorchCheckpointIO):
    """The default plugin, recording what it is asked to do."""

    def __init__(self):
        self.calls = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.calls.append(("save", os.path.basename(os.fspath(path)), storage_options))
        if storage_options is None:
            super().save_checkpoint(checkpoint, path)
        else:
            super().save_checkpoint(dict(checkpoint, storage=storage_options), path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.calls.append(("load", os.path.basename(os.fspath(path)), weights_only))
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path):
        self.calls.append(("remove", os.path.basename(os.fspath(path)), None))
        super().remove_checkpoint(path)

    def teardown(self):
        self.calls.append(("teardown", None, None))


# ---------------------------------------------------------------------------------------------- TorchCheckpointIO
def test_torch_checkpoint_io_round_trip_is_atomic_and_on_cpu(tmp_path):
    io = TorchCheckpointIO()
    path = tmp_path / "deep" / "dir" / "a.ckpt"  # parent directories are created
    io.save_checkpoint({"w": torch.ones(2)}, path)
    assert os.listdir(path.parent) == ["a.ckpt"]  # no temporary file left behind
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.ones(2)) and loaded["w"].device.type == "cpu"
    io.remove_checkpoint(path)
    assert not path.exists()
    io.remove_checkpoint(path)  # already gone: nothing happens


def test_torch_checkpoint_io_refuses_code_unless_asked(tmp_path):
    io = TorchCheckpointIO()
    path = tmp_path / "unsafe.ckpt"
    io.save_checkpoint({"obj": _Unpicklable()}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        io.load_checkpoint(path)  # weights_only=None means True
    assert isinstance(io.load_checkpoint(path, weights_only=False)["obj"], _Unpicklable)


def test_torch_checkpoint_io_errors(tmp_path):
    io = TorchCheckpointIO()
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_torch_checkpoint_io_removes_directories_and_links(tmp_path):
    io = TorchCheckpointIO()
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"x")
    io.remove_checkpoint(sharded)
    assert not sharded.exists()
    target = tmp_path / "target.ckpt"
    io.save_checkpoint({}, target)
    link = tmp_path / "last.ckpt"
    link.symlink_to(target)
    io.remove_checkpoint(link)
    assert not link.exists() and target.exists()  # the link goes, not what it points to


def test_torch_checkpoint_io_fsspec_urls():
    pytest.importorskip("fsspec")
    io = TorchCheckpointIO()
    url = "memory://featherlight-ckpt-io/run/a.ckpt"
    io.save_checkpoint({"w": torch.arange(3)}, url)
    assert torch.equal(io.load_checkpoint(url)["w"], torch.arange(3))
    io.remove_checkpoint(url)
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(url)


def test_checkpoint_io_is_abstract():
    with pytest.raises(TypeError):
        CheckpointIO()


# ---------------------------------------------------------------------------------------------- through the trainer
def test_trainer_saves_loads_and_removes_through_the_plugin(tmp_path):
    io = RecordingIO()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=1, monitor="step", mode="max",
                                 every_n_train_steps=1)
    trainer = _trainer(tmp_path, plugins=[io], callbacks=[checkpoint])
    assert trainer.strategy.checkpoint_io is io
    trainer.fit(BoringModel())
    kinds = [kind for kind, _, _ in io.calls]
    assert kinds.count("save") == 2
    assert ("remove", "epoch=0-step=1.ckpt", None) in io.calls  # the dropped top-k file, through the plugin
    assert kinds[-1] == "teardown"  # the run's end tells the plugin
    assert os.listdir(tmp_path / "ckpts") == ["epoch=0-step=2.ckpt"]

    io.calls.clear()
    trainer = _trainer(tmp_path, plugins=io, max_epochs=2)
    trainer.fit(BoringModel(), ckpt_path=checkpoint.best_model_path)
    assert ("load", "epoch=0-step=2.ckpt", True) in io.calls
    assert trainer.global_step == 4


def test_trainer_save_checkpoint_passes_storage_options(tmp_path):
    io = RecordingIO()
    trainer = _trainer(tmp_path, plugins=[io], enable_checkpointing=False)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "x.ckpt", storage_options={"tier": "cold"})
    assert ("save", "x.ckpt", {"tier": "cold"}) in io.calls
    assert torch.load(tmp_path / "x.ckpt", weights_only=True)["storage"] == {"tier": "cold"}

    default = _trainer(tmp_path, enable_checkpointing=False)
    default.fit(BoringModel())
    with pytest.raises(TypeError, match="storage_options"):
        default.save_checkpoint(tmp_path / "y.ckpt", storage_options={"tier": "cold"})


def test_plugins_flag_validation():
    with pytest.raises(MisconfigurationException, match="one checkpoint IO plugin"):
        fl.Trainer(plugins=[TorchCheckpointIO(), TorchCheckpointIO()], logger=False)
    with pytest.raises(MisconfigurationException, match="CheckpointIO"):
        fl.Trainer(plugins=[object()], logger=False)


def test_strategies_take_a_checkpoint_io():
    from featherlight.strategies import DDPStrategy, SingleDeviceStrategy

    io = TorchCheckpointIO()
    assert SingleDeviceStrategy("cpu", checkpoint_io=io).checkpoint_io is io
    assert DDPStrategy(checkpoint_io=io).checkpoint_io is io
    assert isinstance(SingleDeviceStrategy("cpu").checkpoint_io, TorchCheckpointIO)
    with pytest.raises(TypeError, match="CheckpointIO"):
        SingleDeviceStrategy("cpu").checkpoint_io = "not a plugin"


# ---------------------------------------------------------------------------------------------- AsyncCheckpointIO
class BlockingIO(TorchCheckpointIO):
    """Each save waits until the test lets it finish."""

    def __init__(self):
        self.release = threading.Event()
        self.saved = []
        self.fail = None

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        assert self.release.wait(timeout=30), "the test never released the save"
        if self.fail is not None:
            raise self.fail
        self.saved.append((os.path.basename(os.fspath(path)), checkpoint["w"].clone()))
        super().save_checkpoint(checkpoint, path)


def test_async_save_returns_before_the_write_and_snapshots_the_tensors(tmp_path):
    inner = BlockingIO()
    io = AsyncCheckpointIO(inner)
    weights = torch.zeros(3)
    io.save_checkpoint({"w": weights}, tmp_path / "a.ckpt")
    assert inner.saved == [] and not (tmp_path / "a.ckpt").exists()  # the write has not happened yet
    weights += 1  # training goes on and changes the weights
    inner.release.set()
    io.teardown()  # waits for the write
    assert torch.equal(inner.saved[0][1], torch.zeros(3))  # what was saved is the state at save time
    assert torch.equal(torch.load(tmp_path / "a.ckpt", weights_only=True)["w"], torch.zeros(3))


def test_async_second_save_waits_for_the_first(tmp_path):
    inner = BlockingIO()
    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
    second = threading.Thread(target=io.save_checkpoint, args=({"w": torch.ones(1)}, tmp_path / "b.ckpt"))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # still waiting: the first write is not done
    assert inner.saved == []
    inner.release.set()
    second.join(timeout=30)
    assert not second.is_alive()
    io.teardown()
    assert [name for name, _ in inner.saved] == ["a.ckpt", "b.ckpt"]


def test_async_error_is_raised_by_the_next_call_and_by_teardown(tmp_path):
    inner = BlockingIO()
    inner.fail = OSError(28, "No space left on device")
    inner.release.set()
    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="a.ckpt.*No space left") as info:
        io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "b.ckpt")
    assert isinstance(info.value.__cause__, OSError)  # the cause, chained

    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="c.ckpt.*No space left"):
        io.teardown()


def test_async_teardown_during_a_failure_warns_instead_of_replacing_it(tmp_path):
    inner = BlockingIO()
    inner.fail = OSError(28, "No space left on device")
    inner.release.set()
    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
    with pytest.raises(KeyError, match="the run's own error"):
        try:
            raise KeyError("the run's own error")
        finally:
            with pytest.warns(UserWarning, match="No space left"):
                io.teardown()


def test_async_remove_runs_after_queued_saves_and_load_waits(tmp_path):
    inner = BlockingIO()
    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
    io.remove_checkpoint(tmp_path / "a.ckpt")  # queued behind the save: it must not run first
    inner.release.set()
    io.save_checkpoint({"w": torch.ones(1)}, tmp_path / "b.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "b.ckpt")["w"], torch.ones(1))  # waits for the write
    assert not (tmp_path / "a.ckpt").exists()
    io.teardown()


def test_async_in_a_trainer_wraps_the_strategy_default(tmp_path):
    io = AsyncCheckpointIO()
    trainer = _trainer(tmp_path, plugins=[io], callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1,
                                                                           every_n_train_steps=1)])
    assert trainer.strategy.checkpoint_io is io and isinstance(io.checkpoint_io, TorchCheckpointIO)
    trainer.fit(BoringModel())
    names = sorted(os.listdir(tmp_path / "ckpts"))
    assert names == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]  # written by the time fit returns
    loaded = TorchCheckpointIO().load_checkpoint(tmp_path / "ckpts" / names[-1])
    assert loaded["global_step"] == 2
    model = BoringModel()
    trainer = _trainer(tmp_path, plugins=[AsyncCheckpointIO()], max_epochs=2, enable_checkpointing=False)
    trainer.fit(model, ckpt_path=tmp_path / "ckpts" / names[-1])
    assert trainer.global_step == 4


def test_async_snapshot_keeps_shared_storage_and_copies_mutable_objects(tmp_path):
    inner = BlockingIO()
    io = AsyncCheckpointIO(inner)
    weight = torch.arange(6.0).reshape(2, 3)
    extra = {"history": [1, 2]}
    checkpoint = {"w": weight, "tied": weight, "view": weight.t(), "row": weight[1], "extra": extra}
    io.save_checkpoint(checkpoint, tmp_path / "a.ckpt")
    weight.zero_()  # training goes on: tensors and objects change after the save
    extra["history"].append(3)
    inner.release.set()
    io.teardown()
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded["extra"] == {"history": [1, 2]}
    # views of one storage are still views of one storage, as torch.save writes them
    assert loaded["tied"].untyped_storage().data_ptr() == loaded["w"].untyped_storage().data_ptr()
    assert loaded["view"].untyped_storage().data_ptr() == loaded["w"].untyped_storage().data_ptr()
    assert torch.equal(loaded["view"], loaded["w"].t()) and torch.equal(loaded["row"], loaded["w"][1])


class PointerIO(TorchCheckpointIO):
    """Records where the tensors it is given live."""

    def __init__(self):
        self.pointers = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.pointers.append(checkpoint["w"].untyped_storage().data_ptr())
        super().save_checkpoint(checkpoint, path)


class MemoryIO(CheckpointIO):
    """Keeps checkpoints in memory: it holds on to the tensors it is given."""

    def __init__(self):
        self.kept = {}

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.kept[os.fspath(path)] = checkpoint

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return self.kept[os.fspath(path)]

    def remove_checkpoint(self, path):
        self.kept.pop(os.fspath(path), None)


def test_async_snapshot_reuses_its_host_buffers_only_for_file_writers(tmp_path):
    io = AsyncCheckpointIO(PointerIO())
    weights = torch.zeros(1000)
    for i in range(3):
        weights.fill_(i)
        io.save_checkpoint({"w": weights}, tmp_path / f"{i}.ckpt")
    io.teardown()
    assert len(set(io.checkpoint_io.pointers)) == 1  # the second and third saves copied into the first's buffer
    assert [float(torch.load(tmp_path / f"{i}.ckpt", weights_only=True)["w"][0]) for i in range(3)] == [0, 1, 2]

    memory = MemoryIO()
    io = AsyncCheckpointIO(memory)
    for i in range(3):
        weights.fill_(i)
        io.save_checkpoint({"w": weights}, f"{i}.ckpt")
    io.teardown()
    # a plugin that keeps what it is given gets a fresh copy each time
    assert [float(memory.kept[f"{i}.ckpt"]["w"][0]) for i in range(3)] == [0, 1, 2]


def test_async_removal_after_a_failed_write_is_skipped(tmp_path):
    inner = BlockingIO()
    io = AsyncCheckpointIO(inner)
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "old.ckpt")
    inner.release.set()
    io.load_checkpoint(tmp_path / "old.ckpt")  # written
    inner.fail = OSError(28, "No space left on device")
    pending = io.save_checkpoint({"w": torch.ones(1)}, tmp_path / "new.ckpt")
    io.remove_checkpoint(tmp_path / "old.ckpt")  # pruning that assumed the new file would exist
    io.wait_idle()
    assert (tmp_path / "old.ckpt").exists()  # still the last good checkpoint
    with pytest.raises(CheckpointError, match="new.ckpt.*No space left"):
        pending.wait()
    pending.wait()  # raised once: by the first to wait
    io.teardown()  # already raised: not again


def test_async_copies_share_one_snapshot_and_stop_at_a_failure(tmp_path):
    inner = BlockingIO()
    inner.release.set()
    io = AsyncCheckpointIO(inner)
    pending = io.write_in_background({"w": torch.ones(2)}, [tmp_path / "a.ckpt", tmp_path / "last.ckpt"])
    pending.wait()
    assert [name for name, _ in inner.saved] == ["a.ckpt", "last.ckpt"]
    inner.fail = OSError(28, "No space left on device")
    pending = io.write_in_background({"w": torch.ones(2)}, [tmp_path / "b.ckpt", tmp_path / "last.ckpt"])
    with pytest.raises(CheckpointError, match="b.ckpt"):
        pending.wait()
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(2))  # untouched
    assert pending.failed and len(inner.saved) == 2
    io.teardown()


def test_async_checkpoint_io_pickles_before_use():
    io = AsyncCheckpointIO(TorchCheckpointIO())
    clone = pickle.loads(pickle.dumps(io))
    assert isinstance(clone.checkpoint_io, TorchCheckpointIO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone.teardown()


def test_lightning_paths_of_the_plugins():
    from featherlight.pytorch.plugins import AsyncCheckpointIO as PytorchAsync
    from featherlight.pytorch.plugins.io.async_plugin import AsyncCheckpointIO as ModuleAsync
    from featherlight.pytorch.plugins.io.checkpoint_plugin import CheckpointIO as ModuleCheckpointIO
    from featherlight.pytorch.plugins.io.torch_plugin import TorchCheckpointIO as ModuleTorchIO
    from featherlight.pytorch.plugins.precision import MixedPrecision
    from featherlight.pytorch.plugins.precision.amp import MixedPrecision as ModuleMixed

    assert PytorchAsync is ModuleAsync is AsyncCheckpointIO
    assert ModuleCheckpointIO is CheckpointIO and ModuleTorchIO is TorchCheckpointIO
    assert MixedPrecision is ModuleMixed


def test_wrappers_of_wrappers_get_the_strategy_plugin():
    inner = AsyncCheckpointIO()
    outer = AsyncCheckpointIO(inner)
    trainer = _trainer(".", plugins=[outer])
    assert trainer.strategy.checkpoint_io is outer and outer.checkpoint_io is inner
    assert isinstance(inner.checkpoint_io, TorchCheckpointIO)


class _LightningStyleIO(CheckpointIO):
    """A plugin written for Lightning's call: `load_checkpoint(path, <its own second argument>, weights_only=...)`."""

    def __init__(self):
        self.loaded = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        torch.save(checkpoint, path)

    def load_checkpoint(self, path, storage_options=None, weights_only=True):
        self.loaded.append((os.path.basename(path), storage_options, weights_only))
        return torch.load(path, weights_only=True)

    def remove_checkpoint(self, path):
        os.remove(path)


def test_strategy_calls_plugins_as_lightning_does(tmp_path):
    io = _LightningStyleIO()
    from featherlight.strategies import SingleDeviceStrategy

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = _trainer(tmp_path, strategy=SingleDeviceStrategy("cpu", checkpoint_io=io), callbacks=[checkpoint],
                       max_epochs=2, limit_train_batches=1)
    trainer.fit(BoringModel())
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-step=2.ckpt", "last.ckpt"]
    trainer.test(BoringModel(), ckpt_path=checkpoint.last_model_path, verbose=False)
    assert io.loaded == [("last.ckpt", None, True)]  # no map_location passed positionally or by name
