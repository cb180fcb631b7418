import logging
import os
import re
import shutil
import warnings
from datetime import timedelta

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks.checkpoint import Checkpoint
from featherlight.callbacks.model_checkpoint import ModelCheckpoint
from featherlight.loggers.csv_logs import CSVLogger
from featherlight.loggers.logger import Logger
from featherlight.utilities.exceptions import MisconfigurationException

SEQ = [5.0, 3.0, 4.0, 1.0, 2.0]  # val_loss of epochs 0..4


class SeqModule(L.LightningModule):
    """Logs ``val_seq[epoch]`` as ``val_name`` after each validation and ``train_seq[epoch]`` at train epoch end."""

    def __init__(self, val_seq=None, train_seq=None, val_name="val_loss", fail_at_step=None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.val_seq, self.train_seq, self.val_name = val_seq, train_seq, val_name
        self.val_calls = 0
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise ValueError("boom")
        return self.layer(batch[0]).sum()

    def on_train_epoch_end(self):
        if self.train_seq is not None:
            self.log("train_metric", float(self.train_seq[min(self.current_epoch, len(self.train_seq) - 1)]))

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or self.val_seq is None:
            return
        self.log(self.val_name, float(self.val_seq[min(self.val_calls, len(self.val_seq) - 1)]))
        self.val_calls += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class NoValModule(SeqModule):
    """No validation loop at all."""

    validation_step = L.LightningModule.validation_step
    on_validation_epoch_end = L.LightningModule.on_validation_epoch_end


def _loader(n_batches=4):
    return DataLoader(TensorDataset(torch.randn(2 * n_batches, 2)), batch_size=2)


def _trainer(tmp_path, callbacks, **kwargs):
    opts = dict(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=tmp_path)
    opts.update(kwargs)
    return L.Trainer(callbacks=callbacks, **opts)


def _fit(tmp_path, callbacks, val_seq=SEQ, train_seq=None, module=None, n_batches=4, **kwargs):
    trainer = _trainer(tmp_path, callbacks, **kwargs)
    model = module or (SeqModule(val_seq, train_seq) if val_seq is not None else NoValModule(None, train_seq))
    val = _loader(n_batches) if val_seq is not None else None
    trainer.fit(model, _loader(n_batches), val)
    return trainer


def _names(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _ckpt_dir(tmp_path):
    return os.path.join(str(tmp_path), "checkpoints")


# ------------------------------------------------------------------------------------------- top-k
def test_top_k_min_keeps_best_files(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    _fit(tmp_path, [cb])
    d = _ckpt_dir(tmp_path)
    # epochs 3 (1.0) and 4 (2.0) are the two smallest; 4 batches per epoch
    assert _names(d) == ["epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt"]
    assert cb.best_model_path == os.path.join(d, "epoch=3-step=16.ckpt")
    assert float(cb.best_model_score) == 1.0
    assert cb.kth_best_model_path == os.path.join(d, "epoch=4-step=20.ckpt")
    assert float(cb.kth_value) == 2.0
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {
        "epoch=3-step=16.ckpt": 1.0, "epoch=4-step=20.ckpt": 2.0}
    assert float(cb.current_score) == 2.0
    assert cb.last_model_path == ""


def test_top_k_max(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2, mode="max")
    _fit(tmp_path, [cb])
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=0-step=4.ckpt", "epoch=2-step=12.ckpt"]
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=4.ckpt"
    assert float(cb.best_model_score) == 5.0


def test_save_top_k_minus_one_keeps_everything_and_zero_nothing(tmp_path):
    keep_all = ModelCheckpoint(dirpath=tmp_path / "all", monitor="val_loss", save_top_k=-1)
    none = ModelCheckpoint(dirpath=tmp_path / "none", monitor="val_loss", save_top_k=0, mode="max")
    _fit(tmp_path, [keep_all, none])
    assert len(_names(tmp_path / "all")) == 5
    assert len(keep_all.best_k_models) == 5
    assert _names(tmp_path / "none") == []
    assert none.best_model_path == "" and none.best_k_models == {}


def test_no_monitor_keeps_only_newest(tmp_path):
    cb = ModelCheckpoint()
    _fit(tmp_path, [cb], max_epochs=3)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=2-step=12.ckpt"]
    assert cb.best_model_path.endswith("epoch=2-step=12.ckpt")
    assert cb.best_k_models == {} and cb.best_model_score is None


def test_nan_ranks_last(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    _fit(tmp_path, [cb], val_seq=[float("nan"), 3.0, 2.0], max_epochs=3)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    cb2 = ModelCheckpoint(dirpath=tmp_path / "nan", monitor="val_loss", save_top_k=3, mode="max")
    _fit(tmp_path, [cb2], val_seq=[float("nan")], max_epochs=1)
    assert float(next(iter(cb2.best_k_models.values()))) == float("-inf")


# ------------------------------------------------------------------------------------------- last
def test_save_last_copy(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_last=True)
    _fit(tmp_path, [cb])
    d = _ckpt_dir(tmp_path)
    assert _names(d) == ["epoch=3-step=16.ckpt", "last.ckpt"]
    last = os.path.join(d, "last.ckpt")
    assert cb.last_model_path == last and not os.path.islink(last)
    ckpt = torch.load(last, weights_only=True)
    # `last` is refreshed together with a new top-k checkpoint (as in Lightning): epoch 4 was not one
    assert ckpt["global_step"] == 16
    # the state stored in the file already names the file itself
    state = ckpt["callbacks"][cb.state_key]
    assert state["last_model_path"] == last
    assert state["best_model_path"] == cb.best_model_path


def test_save_last_link_points_to_newest_checkpoint(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last="link")
    _fit(tmp_path, [cb])
    d = _ckpt_dir(tmp_path)
    last = os.path.join(d, "last.ckpt")
    assert os.path.islink(last)
    assert os.readlink(last) == "epoch=3-step=16.ckpt"  # relative: the directory can move
    assert _names(d) == ["epoch=3-step=16.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 16


def test_save_last_link_follows_every_save(tmp_path):
    cb = ModelCheckpoint(save_top_k=-1, save_last="link")
    _fit(tmp_path, [cb], max_epochs=2)
    assert os.readlink(os.path.join(_ckpt_dir(tmp_path), "last.ckpt")) == "epoch=1-step=8.ckpt"


def test_save_last_link_without_top_k_writes_a_file(tmp_path):
    cb = ModelCheckpoint(save_top_k=0, save_last="link")
    _fit(tmp_path, [cb], max_epochs=2)
    last = os.path.join(_ckpt_dir(tmp_path), "last.ckpt")
    assert _names(_ckpt_dir(tmp_path)) == ["last.ckpt"]
    assert not os.path.islink(last)
    assert torch.load(last, weights_only=True)["global_step"] == 8


def test_save_last_link_falls_back_to_copy(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("links not permitted")

    monkeypatch.setattr(os, "symlink", no_links)
    cb = ModelCheckpoint(save_last="link")
    _fit(tmp_path, [cb], max_epochs=2)
    last = os.path.join(_ckpt_dir(tmp_path), "last.ckpt")
    assert os.path.isfile(last) and not os.path.islink(last)
    with open(last, "rb") as a, open(cb.best_model_path, "rb") as b:
        assert a.read() == b.read()


def test_save_last_when_monitor_never_logged_without_validation(tmp_path):
    cb = ModelCheckpoint(monitor="nope", save_last=True)
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        _fit(tmp_path, [cb], val_seq=None, train_seq=SEQ, max_epochs=2)
    # no top-k file (no score), but `last` is still written when training ends
    assert _names(_ckpt_dir(tmp_path)) == ["last.ckpt"]


def test_save_last_custom_name(tmp_path, monkeypatch):
    monkeypatch.setattr(ModelCheckpoint, "CHECKPOINT_NAME_LAST", "{epoch}-last")
    cb = ModelCheckpoint(save_top_k=-1, save_last=True)
    _fit(tmp_path, [cb], max_epochs=2)
    # the previous `last` is replaced, not accumulated
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=0-step=4.ckpt", "epoch=1-last.ckpt", "epoch=1-step=8.ckpt"]
    assert cb.last_model_path.endswith("epoch=1-last.ckpt")


# ------------------------------------------------------------------------------------------- names
def test_format_checkpoint_name(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_loss:.2f}")
    name = lambda *a, **k: os.path.basename(cb.format_checkpoint_name(*a, **k))  # noqa: E731
    assert name({"epoch": 3, "val_loss": torch.tensor(0.123456)}) == "epoch=3-val_loss=0.12.ckpt"
    assert name({"epoch": 3}) == "epoch=3-val_loss=0.00.ckpt"  # missing keys format as 0
    assert name({"epoch": 3, "val_loss": 1.0}, ver=2) == "epoch=3-val_loss=1.00-v2.ckpt"
    assert name({"epoch": 3}, filename="{epoch:03d}") == "epoch=003.ckpt"
    assert name({"epoch": 3}, filename="fixed", prefix="pre") == "pre-fixed.ckpt"
    assert cb.format_checkpoint_name({"epoch": 1}).startswith(os.path.realpath(str(tmp_path)))
    # a longer name that contains a shorter one is formatted on its own
    cb2 = ModelCheckpoint(filename="{epoch}-{epoch_test}")
    assert cb2.format_checkpoint_name({"epoch": 1, "epoch_test": 2}) == "epoch=1-epoch_test=2.ckpt"
    plain = ModelCheckpoint(filename="e{epoch:02d}_loss{val_loss:.1f}", auto_insert_metric_name=False)
    assert plain.format_checkpoint_name({"epoch": 4, "val_loss": 0.25}) == "e04_loss0.2.ckpt"
    assert ModelCheckpoint().format_checkpoint_name({"epoch": 1, "step": 7}) == "epoch=1-step=7.ckpt"


def test_template_filenames_on_disk(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2, filename="{epoch}-{val_loss:.2f}")
    _fit(tmp_path, [cb])
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=3-val_loss=1.00.ckpt", "epoch=4-val_loss=2.00.ckpt"]


def test_logged_epoch_and_step_are_used_as_ints(tmp_path):
    class LogsEpoch(SeqModule):
        def on_validation_epoch_end(self):
            super().on_validation_epoch_end()
            if not self.trainer.sanity_checking:
                self.log("epoch", float(self.current_epoch + 10))

    cb = ModelCheckpoint(filename="{epoch}", save_top_k=-1)
    _fit(tmp_path, [cb], module=LogsEpoch(SEQ), max_epochs=1)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=10.ckpt"]


def test_slash_in_metric_name_does_not_create_directories(tmp_path):
    cb = ModelCheckpoint(monitor="val/loss", filename="{epoch}-{val/loss:.2f}", save_top_k=2)
    assert os.path.basename(cb.format_checkpoint_name({"epoch": 1, "val/loss": 0.5})) == "epoch=1-val_loss=0.50.ckpt"
    _fit(tmp_path, [cb], module=SeqModule(SEQ, val_name="val/loss"))
    d = _ckpt_dir(tmp_path)
    assert _names(d) == ["epoch=3-val_loss=1.00.ckpt", "epoch=4-val_loss=2.00.ckpt"]
    assert all(os.path.isfile(os.path.join(d, n)) for n in _names(d))  # no `val` sub-directory
    assert float(cb.best_model_score) == 1.0


def test_version_counter(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    (d / "epoch=0-step=4.ckpt").write_bytes(b"not ours")
    cb = ModelCheckpoint(dirpath=d, save_top_k=-1)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        _fit(tmp_path, [cb], max_epochs=1)
    assert _names(d) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt"]
    assert (d / "epoch=0-step=4.ckpt").read_bytes() == b"not ours"

    # same fixed name every epoch: -v1, -v2, ...
    cb2 = ModelCheckpoint(dirpath=tmp_path / "fixed", filename="model", monitor="val_loss", save_top_k=-1)
    _fit(tmp_path, [cb2], max_epochs=3)
    assert _names(tmp_path / "fixed") == ["model-v1.ckpt", "model-v2.ckpt", "model.ckpt"]
    # without a monitor the newest replaces the previous one under the same name (as in Lightning)
    cb3 = ModelCheckpoint(dirpath=tmp_path / "newest", filename="model", save_top_k=1)
    _fit(tmp_path, [cb3], max_epochs=3)
    assert _names(tmp_path / "newest") == ["model.ckpt"]


def test_version_counter_disabled_overwrites(tmp_path):
    d = tmp_path / "ckpts"
    cb = ModelCheckpoint(dirpath=d, filename="model", save_top_k=-1, enable_version_counter=False)
    _fit(tmp_path, [cb], max_epochs=3)
    assert _names(d) == ["model.ckpt"]
    assert torch.load(d / "model.ckpt", weights_only=True)["global_step"] == 12


# ------------------------------------------------------------------------------------------- triggers
def test_every_n_train_steps(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)
    _fit(tmp_path, [cb], max_epochs=2)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]


def test_every_n_train_steps_with_accumulation_saves_once_per_step(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)
    _fit(tmp_path, [cb], max_epochs=2, accumulate_grad_batches=2)
    assert _names(_ckpt_dir(tmp_path)) == [
        "epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=1-step=3.ckpt", "epoch=1-step=4.ckpt"]


def test_every_n_train_steps_with_monitor_of_train_metric(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=3, save_top_k=2, monitor="train_metric")
    _fit(tmp_path, [cb], val_seq=None, train_seq=SEQ)
    # train_metric exists from the end of epoch 0 on (step 3 has none: no save); steps 6, 9, 12, 15, 18 see
    # the value of the previous epoch end: 5, 3, 3, 4, 1. Top 2 (ties keep the newer): 12 (3.0) and 18 (1.0)
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {
        "epoch=2-step=12.ckpt": 3.0, "epoch=4-step=18.ckpt": 1.0}
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=2-step=12.ckpt", "epoch=4-step=18.ckpt"]


def test_step_trigger_defers_to_validation_when_metric_missing(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=4, monitor="val_loss", save_top_k=-1, save_on_train_epoch_end=False)
    _fit(tmp_path, [cb], max_epochs=3)
    # every due step is the last batch of the epoch: the save waits for validation's fresh value
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {
        "epoch=0-step=4.ckpt": 5.0, "epoch=1-step=8.ckpt": 3.0, "epoch=2-step=12.ckpt": 4.0}


def test_step_trigger_defers_when_metric_not_logged_yet(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=3, monitor="val_loss", save_top_k=-1, save_on_train_epoch_end=False)
    _fit(tmp_path, [cb], max_epochs=1)
    # step 3 has no val_loss yet: the save happens once validation logged it
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {"epoch=0-step=4.ckpt": 5.0}


def test_train_time_interval(tmp_path):
    cb = ModelCheckpoint(train_time_interval=timedelta(seconds=0), save_top_k=-1)
    _fit(tmp_path, [cb], max_epochs=1)
    assert _names(_ckpt_dir(tmp_path)) == [f"epoch=0-step={s}.ckpt" for s in (1, 2, 3, 4)]
    cb = ModelCheckpoint(dirpath=tmp_path / "hour", train_time_interval=timedelta(hours=1), save_top_k=-1)
    _fit(tmp_path, [cb], max_epochs=1)
    assert _names(tmp_path / "hour") == []


def test_every_n_epochs(tmp_path):
    cb = ModelCheckpoint(every_n_epochs=2, save_top_k=-1, monitor="val_loss")
    _fit(tmp_path, [cb])
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_saves_after_validation_when_it_runs_mid_epoch(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1)
    _fit(tmp_path, [cb], val_seq=[5, 3, 4, 1], max_epochs=2, val_check_interval=0.5)
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {
        "epoch=0-step=2.ckpt": 5.0, "epoch=0-step=4.ckpt": 3.0, "epoch=1-step=6.ckpt": 4.0, "epoch=1-step=8.ckpt": 1.0}


def test_check_val_every_n_epoch_saves_at_validation(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1, save_last=True)
    _fit(tmp_path, [cb], max_epochs=4, check_val_every_n_epoch=2)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]


def test_save_on_train_epoch_end_resolution(tmp_path):
    trainer = _trainer(tmp_path, [])
    cb = ModelCheckpoint()
    trainer.num_val_batches = [2]
    assert cb._should_save_on_train_epoch_end(trainer)
    trainer.val_check_interval = 0.5
    assert not cb._should_save_on_train_epoch_end(trainer)
    trainer.num_val_batches = []
    assert cb._should_save_on_train_epoch_end(trainer)  # no validation at all
    trainer.check_val_every_n_epoch = 3
    assert not cb._should_save_on_train_epoch_end(trainer)
    assert ModelCheckpoint(save_on_train_epoch_end=True)._should_save_on_train_epoch_end(trainer)


def test_per_batch_hook_is_free_without_step_triggers():
    # the default callback must not touch the trainer per batch: passing None would raise otherwise
    ModelCheckpoint().on_train_batch_end(None, None, None, None, 0)
    ModelCheckpoint(every_n_epochs=3).on_train_batch_end(None, None, None, None, 0)
    with pytest.raises(AttributeError):
        ModelCheckpoint(every_n_train_steps=2).on_train_batch_end(None, None, None, None, 0)


def test_nothing_saved_in_sanity_check_fast_dev_run_or_evaluation(tmp_path):
    class LogsInSanity(SeqModule):
        def on_validation_epoch_end(self):
            self.log("val_loss", 0.0 if self.trainer.sanity_checking else 1.0)

    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1)
    trainer = _fit(tmp_path, [cb], module=LogsInSanity(), max_epochs=1)
    assert [float(v) for v in cb.best_k_models.values()] == [1.0]  # the sanity value (0.0) never ranked
    before = _names(_ckpt_dir(tmp_path))
    trainer.validate(LogsInSanity(), _loader())  # evaluation never saves
    assert _names(_ckpt_dir(tmp_path)) == before

    cb = ModelCheckpoint(dirpath=tmp_path / "fdr", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(fast_dev_run=2, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(SeqModule(SEQ), _loader(), _loader())
    assert _names(tmp_path / "fdr") == []


def test_no_save_in_sanity_check_of_a_resumed_run(tmp_path):
    class LogsInSanity(SeqModule):
        def on_validation_epoch_end(self):
            self.log("val_loss", 0.0 if self.trainer.sanity_checking else 1.0)

    first = ModelCheckpoint(dirpath=tmp_path / "a")
    _fit(tmp_path, [first], max_epochs=1)
    cb = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_top_k=-1, save_on_train_epoch_end=False)
    trainer = _trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(LogsInSanity(), _loader(), _loader(), ckpt_path=first.best_model_path)
    assert [float(v) for v in cb.best_k_models.values()] == [1.0]


def test_no_save_before_the_first_step(tmp_path):
    cb = ModelCheckpoint(save_last=True)
    _fit(tmp_path, [cb], max_epochs=1, limit_train_batches=0)
    assert _names(_ckpt_dir(tmp_path)) in ([], ["last.ckpt"])
    assert cb.best_model_path == ""


# ------------------------------------------------------------------------------------------- errors
def test_invalid_configurations():
    with pytest.raises(MisconfigurationException, match="monitor=None"):
        ModelCheckpoint(save_top_k=2)
    with pytest.raises(MisconfigurationException, match="monitor=None"):
        ModelCheckpoint(save_top_k=5, monitor=None)
    ModelCheckpoint(save_top_k=-1)  # keep all: fine without monitor (as in Lightning)
    ModelCheckpoint(save_top_k=0)
    ModelCheckpoint(save_top_k=3, monitor="x")
    with pytest.raises(MisconfigurationException, match="save_top_k=-2"):
        ModelCheckpoint(save_top_k=-2, monitor="x")
    with pytest.raises(MisconfigurationException, match="`mode` can be min, max"):
        ModelCheckpoint(mode="avg")
    with pytest.raises(MisconfigurationException, match="mutually exclusive"):
        ModelCheckpoint(every_n_train_steps=2, every_n_epochs=1)
    with pytest.raises(MisconfigurationException, match="mutually exclusive"):
        ModelCheckpoint(every_n_epochs=1, train_time_interval=timedelta(seconds=1))
    with pytest.raises(MisconfigurationException, match="every_n_train_steps=-1"):
        ModelCheckpoint(every_n_train_steps=-1)
    with pytest.raises(MisconfigurationException, match="every_n_epochs=-1"):
        ModelCheckpoint(every_n_epochs=-1)


def test_missing_monitor_raises_after_validation_ran(tmp_path):
    cb = ModelCheckpoint(monitor="val_los")
    expected = re.escape(
        "`ModelCheckpoint(monitor='val_los')` could not find the monitored key in the returned metrics: "
        "['val_loss', 'epoch', 'step']. HINT: Did you call `log('val_los', value)` in the `LightningModule`?"
    )
    with pytest.raises(MisconfigurationException, match=expected):
        _fit(tmp_path, [cb])
    assert _names(_ckpt_dir(tmp_path)) == []


def test_missing_monitor_only_warns_before_validation(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_on_train_epoch_end=True)
    # validation every 2 epochs: at the end of epoch 0 the metric does not exist yet
    with pytest.warns(UserWarning, match=r"monitor='val_loss'\)` could not find the monitored key"):
        _fit(tmp_path, [cb], max_epochs=2, check_val_every_n_epoch=2)
    # epoch 0: warned, nothing saved; epoch 1: validation ran, its value is ranked
    assert {os.path.basename(k): float(v) for k, v in cb.best_k_models.items()} == {"epoch=1-step=8.ckpt": 5.0}


# ------------------------------------------------------------------------------------------- several callbacks
def test_several_checkpoints_coexist(tmp_path):
    best = ModelCheckpoint(monitor="val_loss", filename="best-{epoch}")
    every = ModelCheckpoint(filename="all-{epoch}", save_top_k=-1)
    steps = ModelCheckpoint(every_n_train_steps=10, filename="step-{step}", save_top_k=-1)
    last = ModelCheckpoint(save_top_k=0, save_last=True, mode="max")
    _fit(tmp_path, [best, every, steps, last])
    keys = {cb.state_key for cb in (best, every, steps, last)}
    assert len(keys) == 4
    assert best.state_key == ("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                              "'every_n_epochs': 1, 'train_time_interval': None}")
    assert _names(_ckpt_dir(tmp_path)) == sorted(
        ["best-epoch=3.ckpt", "last.ckpt", "step-step=10.ckpt", "step-step=20.ckpt"]
        + [f"all-epoch={e}.ckpt" for e in range(5)])
    ckpt = torch.load(last.last_model_path, weights_only=True)
    assert keys <= set(ckpt["callbacks"])
    assert ckpt["callbacks"][best.state_key]["best_model_path"] == best.best_model_path
    assert ckpt["callbacks"][every.state_key]["best_model_path"] == every.best_model_path

    # every state goes back to its own callback on resume
    again = [ModelCheckpoint(monitor="val_loss", filename="best-{epoch}"),
             ModelCheckpoint(filename="all-{epoch}", save_top_k=-1),
             ModelCheckpoint(every_n_train_steps=10, filename="step-{step}", save_top_k=-1),
             ModelCheckpoint(save_top_k=0, save_last=True, mode="max")]
    trainer = _trainer(tmp_path, again, max_epochs=5)
    trainer.fit(SeqModule(SEQ), _loader(), _loader(), ckpt_path=last.last_model_path)
    assert again[0].best_model_path == best.best_model_path
    assert float(again[0].best_model_score) == 1.0
    assert again[1].best_model_path == every.best_model_path
    assert again[3].last_model_path == last.last_model_path


def test_file_kept_by_another_callback_is_not_removed(tmp_path):
    d = tmp_path / "shared"
    best = ModelCheckpoint(dirpath=d, filename="{epoch}", monitor="val_loss")
    newest = ModelCheckpoint(dirpath=d, filename="{epoch}", mode="max", enable_version_counter=False)
    _fit(tmp_path, [best, newest], val_seq=[1.0, 2.0], max_epochs=2)
    # `newest` overwrote epoch=0.ckpt and then moved on to epoch=1.ckpt; epoch=0.ckpt is still `best`'s file
    assert os.path.basename(best.best_model_path) == "epoch=0.ckpt"
    assert _names(d) == ["epoch=0.ckpt", "epoch=1.ckpt"]


def test_files_outside_dirpath_and_resume_file_are_never_removed(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss")
    _fit(tmp_path, [cb], val_seq=[3.0, 2.0], max_epochs=2)
    resume_from = cb.best_model_path
    outside = tmp_path / "elsewhere.ckpt"
    shutil.copy(resume_from, outside)
    cb2 = ModelCheckpoint(monitor="val_loss")
    trainer = _trainer(tmp_path, [cb2], max_epochs=4)
    trainer.fit(SeqModule([1.0, 0.5]), _loader(), _loader(), ckpt_path=resume_from)
    assert os.path.exists(resume_from)  # dropped out of the top 1, but the run resumed from it
    assert os.path.exists(outside)
    assert cb2.best_model_path != resume_from and os.path.exists(cb2.best_model_path)
    assert not cb._should_remove_checkpoint(trainer, str(outside), cb2.best_model_path)


# ------------------------------------------------------------------------------------------- state
def test_state_dict_round_trip(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    _fit(tmp_path, [cb])
    state = cb.state_dict()
    assert set(state) == {"monitor", "best_model_score", "best_model_path", "current_score", "dirpath",
                          "best_k_models", "kth_best_model_path", "kth_value", "last_model_path"}
    fresh = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    fresh.load_state_dict(state)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path", "best_k_models"):
        assert getattr(fresh, key) == getattr(cb, key)
    assert float(fresh.best_model_score) == float(cb.best_model_score)
    assert float(fresh.kth_value) == float(cb.kth_value)

    moved = ModelCheckpoint(dirpath=tmp_path / "other", monitor="val_loss", save_top_k=2)
    with pytest.warns(UserWarning, match="^The dirpath has changed from .* Only `best_model_path` will be reloaded"):
        moved.load_state_dict(state)
    assert moved.best_model_path == cb.best_model_path
    assert moved.best_k_models == {} and moved.best_model_score is None


def test_resume_without_a_callback_of_the_checkpoint_warns_like_lightning(tmp_path):
    first = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss")
    _fit(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", mode="max")], max_epochs=1)
    path = first.best_model_path

    def resume(callbacks):
        _trainer(tmp_path, callbacks, max_epochs=2).fit(SeqModule(SEQ), _loader(), _loader(), ckpt_path=path)

    missing = re.escape(f"Please add the following callbacks: [{first.state_key!r}]")
    with pytest.warns(UserWarning, match="^Be aware that when using `ckpt_path`, callbacks used to create the "
                                         f"checkpoint need to be provided during `Trainer` instantiation. {missing}"):
        resume([ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", mode="max")])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resume([ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", mode="max"),
                ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss")])
    assert not any("Please add the following callbacks" in str(w.message) for w in record)


def test_resume_continues_the_ranking(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    _fit(tmp_path, [cb], max_epochs=3)
    assert sorted(float(v) for v in cb.best_k_models.values()) == [3.0, 4.0]
    cb2 = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    trainer = _trainer(tmp_path, [cb2], max_epochs=5)
    trainer.fit(SeqModule(SEQ[3:]), _loader(), _loader(), ckpt_path=cb.last_model_path)
    # epochs 3 and 4 log 1.0 and 2.0: they push the restored 3.0 and 4.0 out, and their files go
    assert sorted(float(v) for v in cb2.best_k_models.values()) == [1.0, 2.0]
    kept = sorted(os.path.basename(p) for p in cb2.best_k_models)
    assert kept == ["epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt"]
    assert _names(_ckpt_dir(tmp_path)) == sorted(kept + ["last.ckpt"])


# ------------------------------------------------------------------------------------------- integration
def test_every_written_file_loads_with_weights_only(tmp_path):
    callbacks = [ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True),
                 ModelCheckpoint(dirpath=tmp_path / "w", save_weights_only=True, save_top_k=-1),
                 ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=5, save_top_k=-1, save_last="link")]
    _fit(tmp_path, callbacks, max_epochs=3)
    model = SeqModule()
    paths = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".ckpt")]
    assert len(paths) >= 8
    for path in paths:
        ckpt = torch.load(path, weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        if os.path.dirname(path) == str(tmp_path / "w"):
            assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
        else:
            assert "optimizer_states" in ckpt and "callbacks" in ckpt


def test_default_dirpath_with_logger_and_after_save_checkpoint(tmp_path):
    class Recorder(CSVLogger):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.saved = []

        def after_save_checkpoint(self, checkpoint_callback):
            self.saved.append(checkpoint_callback.best_model_path)

    logger = Recorder(tmp_path / "logs", name="exp")
    cb = ModelCheckpoint(save_top_k=-1)
    trainer = _fit(tmp_path, [cb], max_epochs=2, logger=logger)
    expected = os.path.join(str(tmp_path / "logs"), "exp", "version_0", "checkpoints")
    assert cb.dirpath == expected
    assert os.path.join(trainer.log_dir, "checkpoints") == expected
    assert _names(expected) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert [os.path.basename(p) for p in logger.saved] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]


def test_default_dirpath_logger_without_save_dir(tmp_path):
    class Remote(Logger):
        name = "remote"
        version = "run-7"

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    cb = ModelCheckpoint()
    _fit(tmp_path, [cb], max_epochs=1, logger=Remote())
    assert cb.dirpath == os.path.join(str(tmp_path), "remote", "run-7", "checkpoints")


def test_default_dirpath_without_logger(tmp_path):
    cb = ModelCheckpoint()
    _fit(tmp_path, [cb], max_epochs=1)
    assert cb.dirpath == os.path.join(str(tmp_path), "checkpoints")
    explicit = ModelCheckpoint(dirpath="~/x/../y")
    assert explicit.dirpath == os.path.realpath(os.path.expanduser("~/y"))


def test_to_yaml(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    _fit(tmp_path, [cb])
    cb.to_yaml()
    with open(os.path.join(cb.dirpath, "best_k_models.yaml")) as f:
        assert yaml.safe_load(f) == {k: float(v) for k, v in cb.best_k_models.items()}
    cb.to_yaml(tmp_path / "scores.yaml")
    assert (tmp_path / "scores.yaml").exists()


def test_save_on_exception(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_on_exception=True)
    with pytest.raises(ValueError, match="boom"):
        _fit(tmp_path, [cb], module=SeqModule(SEQ, fail_at_step=9))
    # epoch 1's best and the one written at the failure (step 9, inside epoch 2)
    assert _names(_ckpt_dir(tmp_path)) == ["epoch=1-step=8.ckpt", "epoch=2-step=9.ckpt"]
    assert torch.load(os.path.join(_ckpt_dir(tmp_path), "epoch=2-step=9.ckpt"), weights_only=True)["global_step"] == 9


def test_verbose_messages(tmp_path, caplog):
    cb = ModelCheckpoint(monitor="val_loss", verbose=True)
    with caplog.at_level(logging.INFO, logger="featherlight"):
        _fit(tmp_path, [cb], max_epochs=2)
    text = caplog.text
    assert "'val_loss' reached 5.00000" in text
    assert "'val_loss' reached 3.00000" in text


def test_is_a_checkpoint_and_monitors_metrics():
    assert isinstance(ModelCheckpoint(), Checkpoint)
    assert ModelCheckpoint.monitors_metrics and Checkpoint.monitors_metrics


# ------------------------------------------------------------------------------------------- parity with Lightning
def _parity_scenarios():
    return {
        "min_top2_last": dict(cbs=[dict(monitor="val_loss", save_top_k=2, save_last=True)]),
        "max_link": dict(cbs=[dict(monitor="val_loss", mode="max", save_last="link")]),
        "steps3": dict(cbs=[dict(every_n_train_steps=3, save_top_k=2, monitor="val_loss")]),
        "epochs2_template": dict(cbs=[dict(every_n_epochs=2, save_top_k=-1, filename="{epoch}-{val_loss:.1f}")]),
        "cve2": dict(cbs=[dict(monitor="val_loss", save_top_k=2, save_last=True)], trainer=dict(check_val_every_n_epoch=2)),
        "vci": dict(cbs=[dict(monitor="val_loss", save_top_k=2)], trainer=dict(val_check_interval=0.5)),
        "fixed_name": dict(cbs=[dict(monitor="val_loss", save_top_k=2, filename="fixed")]),
    }


def _run_parity(framework, root, cbs, trainer=None):
    if framework == "lightning":
        import lightning as fw
        from lightning.pytorch.callbacks import ModelCheckpoint as MC
    else:
        fw, MC = L, ModelCheckpoint

    values = [5.0, 3.0, 4.0, 1.0, 2.0, 0.5, 6.0, 0.1, 7.0, 8.0]

    class M(fw.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.calls = 0

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.log("val_loss", values[self.calls])
                self.calls += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    callbacks = [MC(**kw) for kw in cbs]
    opts = dict(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=root)
    opts.update(trainer or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = fw.Trainer(callbacks=callbacks, **opts)
        t.fit(M(), _loader(), _loader())
    rel = lambda p: os.path.relpath(p, root) if p else p  # noqa: E731
    out = {"files": sorted(os.path.relpath(os.path.join(d, f), root) + (" -> " + os.readlink(os.path.join(d, f))
                                                                         if os.path.islink(os.path.join(d, f)) else "")
                           for d, _, fs in os.walk(root) for f in fs)}
    for i, c in enumerate(callbacks):
        out[i] = (rel(c.best_model_path), rel(c.last_model_path), rel(c.kth_best_model_path),
                  {rel(k): float(v) for k, v in c.best_k_models.items()}, c.state_key)
    return out


@pytest.mark.parametrize("scenario", sorted(_parity_scenarios()))
def test_parity_with_lightning(tmp_path, scenario):
    pytest.importorskip("lightning")
    config = _parity_scenarios()[scenario]
    ours = _run_parity("featherlight", str(tmp_path / "ours"), **config)
    theirs = _run_parity("lightning", str(tmp_path / "theirs"), **config)
    assert ours == theirs
