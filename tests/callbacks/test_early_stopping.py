import logging
import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from featherlight.utilities.exceptions import MisconfigurationException

NAN, INF = float("nan"), float("inf")


class SeqModule(L.LightningModule):
    """Logs ``values[i]`` as ``name`` at the i-th (non-sanity) validation, or at train epoch end without it."""

    def __init__(self, values, name="val_loss", where="val", sanity_value=None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.values, self.name, self.where, self.sanity_value = values, name, where, sanity_value
        self.calls = 0

    def _next(self):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return float(value)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def on_train_epoch_end(self):
        if self.where == "train":
            self.log(self.name, self._next())

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            if self.sanity_value is not None:
                self.log(self.name, float(self.sanity_value))
            return
        if self.where == "val":
            self.log(self.name, self._next())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n=4):
    return DataLoader(TensorDataset(torch.randn(2 * n, 2)), batch_size=2)


def _fit(tmp_path, es, values, max_epochs=10, module=None, ckpt_path=None, **kwargs):
    opts = dict(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    opts.update(kwargs)
    trainer = L.Trainer(callbacks=[es] if es is not None else [], **opts)
    trainer.fit(module or SeqModule(values), _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer


# ------------------------------------------------------------------------------------------- patience
def test_patience(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=3)
    trainer = _fit(tmp_path, es, [5, 4, 4.5, 4.2, 4.1, 3, 3])
    # best 4 at epoch 1; epochs 2, 3, 4 do not improve: stop after epoch 4
    assert es.stopped_epoch == 4
    assert trainer.current_epoch == 5
    assert es.wait_count == 3
    assert float(es.best_score) == 4.0
    assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert "did not improve in the last 3 records" in es.stopping_reason_message
    assert trainer.should_stop


def test_improvement_resets_wait_count(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2)
    trainer = _fit(tmp_path, es, [5, 6, 4, 6, 3, 6, 7], max_epochs=7)
    assert es.stopped_epoch == 6 and trainer.current_epoch == 7
    assert float(es.best_score) == 3.0


def test_no_stop_while_improving(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=1)
    trainer = _fit(tmp_path, es, [5, 4, 3, 2], max_epochs=4)
    assert trainer.current_epoch == 4 and not trainer.should_stop
    assert es.stopped_epoch == 0 and es.wait_count == 0
    assert es.stopping_reason == EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None


def test_min_delta(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    assert es.min_delta == -0.1  # signed for mode="min"
    assert EarlyStopping(monitor="x", min_delta=0.1, mode="max").min_delta == 0.1
    # 4.95 and 4.9 are within min_delta of 5: no improvement -> stop after epoch 2
    trainer = _fit(tmp_path, es, [5, 4.95, 4.9, 4.0, 3.0])
    assert es.stopped_epoch == 2 and trainer.current_epoch == 3
    assert float(es.best_score) == 5.0


def test_mode_max(tmp_path):
    es = EarlyStopping(monitor="acc", patience=2, mode="max")
    trainer = _fit(tmp_path, es, None, module=SeqModule([1, 2, 3, 2, 3, 9], name="acc"))
    assert es.stopped_epoch == 4 and trainer.current_epoch == 5
    assert float(es.best_score) == 3.0


# ------------------------------------------------------------------------------------------- thresholds
def test_stopping_threshold(tmp_path):
    es = EarlyStopping(monitor="val_loss", stopping_threshold=2.5, patience=100)
    trainer = _fit(tmp_path, es, [5, 4, 3, 2, 1])
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4
    assert es.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD
    assert "Stopping threshold reached" in es.stopping_reason_message


def test_stopping_threshold_is_strict(tmp_path):
    es = EarlyStopping(monitor="val_loss", stopping_threshold=3.0, patience=100)
    _fit(tmp_path, es, [5, 3, 2.9])
    assert es.stopped_epoch == 2


def test_divergence_threshold(tmp_path):
    es = EarlyStopping(monitor="val_loss", divergence_threshold=10, patience=100)
    trainer = _fit(tmp_path, es, [5, 4, 8, 20, 1])
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4
    assert es.stopping_reason == EarlyStoppingReason.DIVERGENCE_THRESHOLD
    assert "Divergence threshold reached" in es.stopping_reason_message
    es_max = EarlyStopping(monitor="acc", mode="max", divergence_threshold=0.1, patience=100)
    _fit(tmp_path, es_max, None, module=SeqModule([0.5, 0.6, 0.05, 0.9], name="acc"))
    assert es_max.stopped_epoch == 2


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_check_finite(tmp_path, bad):
    es = EarlyStopping(monitor="val_loss", patience=100)
    trainer = _fit(tmp_path, es, [5, 4, bad, 1])
    assert es.stopped_epoch == 2 and trainer.current_epoch == 3
    assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert "is not finite" in es.stopping_reason_message
    assert float(es.best_score) == 4.0


def test_check_finite_off(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=3, check_finite=False)
    trainer = _fit(tmp_path, es, [5, 4, NAN, 3, 3, 3, 3], max_epochs=10)
    # NaN is simply no improvement
    assert es.stopped_epoch == 6 and trainer.current_epoch == 7
    assert float(es.best_score) == 3.0


# ------------------------------------------------------------------------------------------- missing metric
def test_strict_missing_metric_raises_with_available_metrics(tmp_path):
    es = EarlyStopping(monitor="val_los")
    with pytest.raises(RuntimeError, match=r"conditioned on metric `val_los` which is not available.*`val_loss`"):
        _fit(tmp_path, es, [5, 4])


def test_non_strict_missing_metric_is_skipped(tmp_path):
    es = EarlyStopping(monitor="val_los", strict=False, patience=1)
    trainer = _fit(tmp_path, es, [5, 6, 7], max_epochs=3)
    assert trainer.current_epoch == 3 and es.wait_count == 0
    es = EarlyStopping(monitor="val_los", strict=False, verbose=True)
    with pytest.warns(RuntimeWarning, match="not available"):
        _fit(tmp_path, es, [5], max_epochs=1)


def test_fast_dev_run_skips_the_check(tmp_path):
    es = EarlyStopping(monitor="never_logged")
    trainer = L.Trainer(fast_dev_run=True, callbacks=[es], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(SeqModule([1.0]), _loader(), _loader())  # strict, but nothing raises
    assert not trainer.should_stop


# ------------------------------------------------------------------------------------------- when
def test_checks_train_metrics_without_validation(tmp_path):
    es = EarlyStopping(monitor="train_metric", patience=2)
    model = SeqModule([5, 4, 6, 6, 6], name="train_metric", where="train")
    opts = dict(max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = L.Trainer(callbacks=[es], **opts)
    trainer.fit(model, _loader())
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4


def test_checks_after_each_validation_when_it_is_not_once_per_epoch(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2)
    trainer = _fit(tmp_path, es, [5, 6, 7, 8], max_epochs=10, check_val_every_n_epoch=2)
    assert es._check_on_train_epoch_end is False
    # validations after epochs 1, 3, 5: patience is counted in validations, not epochs
    assert es.stopped_epoch == 5 and trainer.current_epoch == 6

    es = EarlyStopping(monitor="val_loss", patience=3)
    trainer = _fit(tmp_path, es, [5, 6, 7, 8], max_epochs=10, val_check_interval=0.5)
    assert es.stopped_epoch == 1 and trainer.current_epoch == 2


def test_check_on_train_epoch_end_resolution(tmp_path):
    es = EarlyStopping(monitor="val_loss")
    _fit(tmp_path, es, [1.0], max_epochs=1)
    assert es._check_on_train_epoch_end is True
    es = EarlyStopping(monitor="val_loss", check_on_train_epoch_end=False)
    _fit(tmp_path, es, [1.0], max_epochs=1, val_check_interval=1.0)
    assert es._check_on_train_epoch_end is False


def test_train_epoch_end_check_sees_metrics_logged_by_the_module_at_epoch_end(tmp_path):
    # the module's on_train_epoch_end runs before the callback's: its value is the one checked
    es = EarlyStopping(monitor="train_metric", patience=1, check_on_train_epoch_end=True)
    model = SeqModule([3, 2, 5, 5], name="train_metric", where="train")
    trainer = L.Trainer(callbacks=[es], max_epochs=10, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, _loader())
    assert es.stopped_epoch == 2 and float(es.best_score) == 2.0


def test_sanity_check_is_ignored(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=1, check_on_train_epoch_end=False)
    # the sanity check logs a value no real epoch can beat; counting it would stop after epoch 0
    trainer = _fit(tmp_path, es, [5, 4, 3], max_epochs=3, module=SeqModule([5, 4, 3], sanity_value=-100.0))
    assert trainer.current_epoch == 3 and es.wait_count == 0 and float(es.best_score) == 3.0


def test_validate_and_test_do_not_check(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=1, check_on_train_epoch_end=False)
    trainer = L.Trainer(callbacks=[es], logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.validate(SeqModule([1.0]), _loader(), verbose=False)
    assert es.wait_count == 0 and float(es.best_score) == INF


def test_min_epochs_is_honoured(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=1)
    trainer = _fit(tmp_path, es, [5, 6, 7, 8, 9, 10], min_epochs=4)
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4


def test_decision_goes_through_the_strategy(tmp_path, monkeypatch):
    calls = []
    es = EarlyStopping(monitor="val_loss", patience=1)
    opts = dict(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = L.Trainer(callbacks=[es], **opts)

    def reduce(decision, all=True):
        calls.append((decision, all))
        return True  # another process wants to stop

    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", reduce)
    trainer.fit(SeqModule([5, 4, 3, 2]), _loader(), _loader())
    assert calls[0] == (False, False)  # any-process semantics
    assert trainer.current_epoch == 1 and es.stopped_epoch == 0


def test_does_not_clear_a_stop_requested_elsewhere(tmp_path):
    class Stopper(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    es = EarlyStopping(monitor="val_loss", patience=10)
    opts = dict(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = L.Trainer(callbacks=[Stopper(), es], **opts)
    trainer.fit(SeqModule([5, 4, 3]), _loader(), _loader())
    assert trainer.current_epoch == 1


def test_verbose_logs_reasons(tmp_path, caplog):
    es = EarlyStopping(monitor="val_loss", patience=1, verbose=True)
    with caplog.at_level(logging.INFO, logger="featherlight"):
        _fit(tmp_path, es, [5, 4, 6])
    assert "Metric val_loss improved" in caplog.text
    assert "did not improve in the last 1 records" in caplog.text


# ------------------------------------------------------------------------------------------- state
def test_state_dict_round_trip_and_resume(tmp_path):
    from featherlight.callbacks.model_checkpoint import ModelCheckpoint

    es = EarlyStopping(monitor="val_loss", patience=3)
    last = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, save_last=True)
    opts = dict(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=tmp_path)
    L.Trainer(callbacks=[es, last], **opts).fit(SeqModule([5, 4, 6, 6]), _loader(), _loader())
    state = es.state_dict()
    assert state["wait_count"] == 2 and state["stopped_epoch"] == 0 and state["patience"] == 3
    assert float(state["best_score"]) == 4.0
    assert state["stopping_reason"] == EarlyStoppingReason.NOT_STOPPED.value
    fresh = EarlyStopping(monitor="val_loss", patience=1)
    fresh.load_state_dict(state)
    assert fresh.wait_count == 2 and fresh.patience == 3 and float(fresh.best_score) == 4.0
    assert fresh.stopping_reason == EarlyStoppingReason.NOT_STOPPED

    # through a checkpoint file: the count continues, one more bad epoch stops the run
    path = last.last_model_path
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["callbacks"][es.state_key]["wait_count"] == 2
    resumed = EarlyStopping(monitor="val_loss", patience=3)
    opts = dict(max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    L.Trainer(callbacks=[resumed], **opts).fit(SeqModule([7, 7, 7]), _loader(), _loader(), ckpt_path=path)
    assert resumed.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert resumed.wait_count == 3


def test_resume_from_checkpoint_saved_after_fit(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=3)
    trainer = _fit(tmp_path, es, [5, 4, 6, 6], max_epochs=4)
    path = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(path)
    resumed = EarlyStopping(monitor="val_loss", patience=3)
    _fit(tmp_path, resumed, None, module=SeqModule([7, 7, 7]), ckpt_path=path)
    assert resumed.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED and resumed.stopped_epoch == 4


def test_stopped_state_round_trip():
    es = EarlyStopping(monitor="x")
    es.stopping_reason, es.stopping_reason_message, es.stopped_epoch = EarlyStoppingReason.STOPPING_THRESHOLD, "m", 7
    other = EarlyStopping(monitor="x")
    other.load_state_dict(es.state_dict())
    assert other.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD
    assert other.stopping_reason_message == "m" and other.stopped_epoch == 7
    # an older state without the reason keys still loads
    other.load_state_dict({"wait_count": 1, "stopped_epoch": 0, "best_score": torch.tensor(1.0), "patience": 2})
    assert other.stopping_reason == EarlyStoppingReason.NOT_STOPPED


def test_state_key_and_config():
    assert EarlyStopping(monitor="a").state_key == "EarlyStopping{'monitor': 'a', 'mode': 'min'}"
    assert EarlyStopping(monitor="a", mode="max").state_key != EarlyStopping(monitor="a").state_key
    with pytest.raises(MisconfigurationException, match="`mode` can be min, max"):
        EarlyStopping(monitor="a", mode="avg")
    assert EarlyStopping.monitors_metrics
    assert float(EarlyStopping(monitor="a").best_score) == INF
    assert float(EarlyStopping(monitor="a", mode="max").best_score) == -INF


def test_two_early_stoppings_keep_separate_state(tmp_path):
    loss = EarlyStopping(monitor="val_loss", patience=10)
    acc = EarlyStopping(monitor="val_loss", mode="max", patience=10)
    opts = dict(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = L.Trainer(callbacks=[loss, acc], **opts)
    trainer.fit(SeqModule([3, 2, 1]), _loader(), _loader())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    states = torch.load(path, weights_only=True)["callbacks"]
    assert states[loss.state_key]["wait_count"] == 0 and float(states[loss.state_key]["best_score"]) == 1.0
    assert states[acc.state_key]["wait_count"] == 2 and float(states[acc.state_key]["best_score"]) == 3.0


# ------------------------------------------------------------------------------------------- parity with Lightning
_PARITY = {
    "patience": (dict(monitor="val_loss", patience=3), [5, 4, 4.5, 4.2, 4.1, 3, 3], {}),
    "min_delta": (dict(monitor="val_loss", patience=2, min_delta=0.1), [5, 4.95, 4.9, 4.0, 3.99, 3.98, 3.97], {}),
    "max": (dict(monitor="val_loss", patience=2, mode="max"), [1, 2, 3, 2, 2, 2, 2], {}),
    "stop_thr": (dict(monitor="val_loss", stopping_threshold=2.5), [5, 4, 3, 2, 1, 0], {}),
    "div_thr": (dict(monitor="val_loss", divergence_threshold=10, patience=10), [5, 4, 8, 20, 1, 0], {}),
    "nan": (dict(monitor="val_loss"), [5, 4, NAN, 1, 0], {}),
    "inf_unchecked": (dict(monitor="val_loss", check_finite=False), [5, 4, INF, 3, 3, 3, 3, 3], {}),
    "min_epochs": (dict(monitor="val_loss", patience=1), [5, 6, 7, 8, 9, 10, 11], dict(min_epochs=4)),
    "cve2": (dict(monitor="val_loss", patience=2), [5, 6, 7, 8, 9, 10], dict(check_val_every_n_epoch=2)),
    "vci": (dict(monitor="val_loss", patience=3), [5, 6, 7, 8, 9, 10], dict(val_check_interval=0.5)),
}


def _run_parity(framework, root, es_kwargs, values, trainer_kwargs):
    if framework == "lightning":
        import lightning as fw
        from lightning.pytorch.callbacks import EarlyStopping as ES
    else:
        fw, ES = L, EarlyStopping

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
                self.log("val_loss", float(values[min(self.calls, len(values) - 1)]))
                self.calls += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    es = ES(**es_kwargs)
    opts = dict(max_epochs=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=root)
    opts.update(trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = fw.Trainer(callbacks=[es], **opts)
        trainer.fit(M(), _loader(), _loader())
    best = float(es.best_score)
    return dict(epoch=trainer.current_epoch, step=trainer.global_step, stopped=es.stopped_epoch,
                wait=es.wait_count, best=None if math.isnan(best) else best, reason=es.stopping_reason.name)


@pytest.mark.parametrize("scenario", sorted(_PARITY))
def test_stop_timing_matches_lightning(tmp_path, scenario):
    pytest.importorskip("lightning")
    ours = _run_parity("featherlight", str(tmp_path / "ours"), *_PARITY[scenario])
    theirs = _run_parity("lightning", str(tmp_path / "theirs"), *_PARITY[scenario])
    assert ours == theirs
