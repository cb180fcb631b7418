"""`self.log` and the metric dicts (`trainer.results`): where values may be logged, how keys are named, and
when the dicts are emptied."""
import pytest
import torch
from torch.utils.data import DataLoader

import featherlight as L
from featherlight.demos.boring_classes import BoringModel, RandomDataset
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException


def lean(**kwargs):
    base = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


def test_on_train_start_logs_into_the_first_epoch():
    class Model(BoringModel):
        def on_train_start(self):
            self.log("start", 4.0, prog_bar=True)

    trainer = lean(limit_train_batches=2, limit_val_batches=0, max_epochs=2)
    trainer.fit(Model())
    assert trainer.callback_metrics["start"] == 4.0
    assert trainer.progress_bar_metrics == {"start": 4.0}


def test_on_train_start_allows_only_epoch_level_logging():
    class Model(BoringModel):
        def on_train_start(self):
            self.log("start", 4.0, on_step=True)

    match = r"You can't `self.log\(on_step=True\)` inside `on_train_start`"
    with pytest.raises(MisconfigurationException, match=match):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


@pytest.mark.parametrize(("fx", "expected"), [(max, 2.0), (min, 0.0), (sum, 3.0), ("MAX", 2.0), (torch.min, 0.0)])
def test_builtin_and_named_reductions(fx, expected):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("i", float(batch_idx), on_step=False, on_epoch=True, reduce_fx=fx)
            return super().training_step(batch, batch_idx)

    trainer = lean(limit_train_batches=3, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["i"] == expected


def test_unsupported_reduction_names_the_supported_ones():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("i", 1.0, reduce_fx=torch.argmax)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"reduce_fx=\{min,max,mean,sum\}\)` are supported"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_test_results_per_dataloader():
    """Forked keys keep the dataloader suffix last; a key logged without the suffix belongs to the loader it was
    logged from; what an epoch hook logs goes to every loader's results."""

    class Model(BoringModel):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("loss", float(dataloader_idx), on_step=True, on_epoch=True)
            self.log(f"only_{dataloader_idx}", 7.0, add_dataloader_idx=False)

        def on_test_epoch_end(self):
            self.log("end", 1.0)

        def test_dataloader(self):
            return [DataLoader(RandomDataset(32, 4)), DataLoader(RandomDataset(32, 4))]

    results = lean(limit_test_batches=2).test(Model(), verbose=False)
    assert results == [
        {"loss_epoch/dataloader_idx_0": 0.0, "only_0": 7.0, "end": 1.0},
        {"loss_epoch/dataloader_idx_1": 1.0, "only_1": 7.0, "end": 1.0},
    ]


def test_step_values_of_several_dataloaders_go_to_the_logger_with_their_own_loader():
    sent = []

    class Recorder(L.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            sent.append(dict(metrics))

    class Model(BoringModel):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("s", float(dataloader_idx), on_step=True, on_epoch=False)

        def test_dataloader(self):
            return [DataLoader(RandomDataset(32, 2)), DataLoader(RandomDataset(32, 2))]

    trainer = lean(limit_test_batches=2, logger=Recorder("."))
    trainer.test(Model(), verbose=False)
    steps = [m for m in sent if "epoch" not in m]
    assert steps == [{"s/dataloader_idx_0": 0.0}] * 2 + [{"s/dataloader_idx_1": 1.0}] * 2


def test_epoch_end_hook_logs_without_a_dataloader_suffix():
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("v", 1.0)

        def on_validation_epoch_end(self):
            self.log("after", 2.0)

        def val_dataloader(self):
            return [DataLoader(RandomDataset(32, 2)), DataLoader(RandomDataset(32, 2))]

    results = lean().validate(Model(), verbose=False)
    assert results == [{"v/dataloader_idx_0": 1.0, "after": 2.0}, {"v/dataloader_idx_1": 1.0, "after": 2.0}]


def test_a_dataloader_suffix_in_the_key_is_refused():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x/dataloader_idx_0", 1.0)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="`self.log` with the key `x/dataloader_idx_0`"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_same_key_in_training_step_and_epoch_end_the_epoch_end_value_wins():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("shared", 100.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self):
            self.log("shared", 111.0, prog_bar=True)

    trainer = lean(limit_train_batches=2, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["shared"] == 111.0
    assert trainer.progress_bar_metrics["shared"] == 111.0


def test_same_key_twice_in_one_hook_with_other_arguments_raises():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", 1.0, prog_bar=False)
            self.log("foo", 1.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"self.log\(foo, ...\)` twice in `training_step`"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_same_key_twice_in_one_hook_with_equivalent_arguments_is_fine():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", 1.0)
            self.log("foo", 2.0, on_step=True, on_epoch=False, reduce_fx="mean")
            return super().training_step(batch, batch_idx)

    trainer = lean(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["foo"] == 2.0


def test_sanity_check_values_are_gone_when_training_starts():
    seen = {}

    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            if self.trainer.sanity_checking:
                self.log("sanity", 1.0, prog_bar=True)

        def on_train_start(self):
            seen["callback"] = dict(self.trainer.callback_metrics)
            seen["pbar"] = dict(self.trainer.progress_bar_metrics)
            seen["logged"] = dict(self.trainer.logged_metrics)

    lean(limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1).fit(Model())
    assert seen == {"callback": {}, "pbar": {}, "logged": {}}


@pytest.mark.parametrize("entry", ["validate", "test"])
def test_a_run_starts_without_the_previous_runs_metrics(entry):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("train_only", 1.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = lean(limit_train_batches=1, limit_val_batches=0, limit_test_batches=1)
    model = Model()
    trainer.fit(model)
    assert "train_only" in trainer.callback_metrics
    getattr(trainer, entry)(model, verbose=False)
    assert trainer.callback_metrics == {} and trainer.logged_metrics == {} and trainer.progress_bar_metrics == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "self.log(foo, None)` was called, but `NoneType` values cannot be logged"),
        ({"a": 1}, "self.log(foo, {'a': 1})` was called, but `dict` values cannot be logged"),
        ({"a": {"b": 1}}, "self.log(foo, {'a': {'b': 1}})` was called, but nested dictionaries cannot be logged"),
        ([1, 2], "self.log(foo, [1, 2])` was called, but `list` values cannot be logged"),
    ],
)
def test_invalid_values_get_lightnings_message(value, message):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", value)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError) as err:
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())
    assert message in str(err.value)


def test_a_multi_element_tensor_is_refused():
    class Model(BoringModel):
        def on_train_start(self):
            self.log("foo", torch.tensor([1.0, 2.0]))

    with pytest.raises(ValueError, match="the tensor must have a single element"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_numbers_and_integer_tensors_are_reported_as_floats():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("n", 3)
            self.log("t", torch.tensor(2))
            self.log("b", True)
            return super().training_step(batch, batch_idx)

    trainer = lean(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(Model())
    metrics = trainer.callback_metrics
    assert {k: (v.dtype, v.item()) for k, v in metrics.items()} == {
        "n": (torch.float32, 3.0), "t": (torch.float32, 2.0), "b": (torch.float32, 1.0)
    }


def test_a_logged_metric_must_be_an_attribute_of_the_module():
    torchmetrics = pytest.importorskip("torchmetrics")

    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.kept = torchmetrics.MeanMetric()

        def training_step(self, batch, batch_idx):
            self.log("m", torchmetrics.MeanMetric())
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"metric_attribute=name\)` where `name` is one of \['kept'\]"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_log_outside_the_loops_logs_into_the_stage_of_the_trainer():
    model = BoringModel()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.state.stage = RunningStage.TRAINING
    model._current_fx_name = "training_step"
    model.trainer = trainer
    model.log("foo", torch.tensor([1.5]), on_epoch=True)
    assert trainer.callback_metrics["foo"].ndim == 0
    assert trainer.callback_metrics["foo"] == 1.5


def test_log_outside_the_loops_without_a_stage_says_why():
    model = BoringModel()
    model.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="result collection is not registered yet"):
        model.log("foo", 1.0)


def _key_warnings(record):
    return [str(w.message) for w in record if "logged both" in str(w.message) or "produced twice" in str(w.message)]


def test_a_key_logged_in_training_and_validation_warns_naming_both_hooks(recwarn):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("loss", out["loss"])
            return out

        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            self.log("loss", out["x"])
            return out

    lean(max_epochs=2, limit_train_batches=2, limit_val_batches=2).fit(Model())
    messages = _key_warnings(recwarn)
    assert len(messages) == 1 and "`training_step`" in messages[0] and "`validation_step`" in messages[0]


def test_distinct_training_and_validation_keys_do_not_warn(recwarn):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train_loss", out["loss"], on_step=True, on_epoch=True)
            return out

        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            self.log("val_loss", out["x"])
            return out

        def on_train_epoch_end(self):
            self.log("train_loss", 1.0)  # the same name in another training hook: the later value wins, no clash

    lean(max_epochs=2, limit_train_batches=2, limit_val_batches=2).fit(Model())
    assert _key_warnings(recwarn) == []


def test_an_explicit_step_key_clashing_with_a_forked_one_warns(recwarn):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("acc", 1.0, on_step=True, on_epoch=True)  # gives acc_step and acc_epoch
            self.log("acc_step", 2.0)
            return out

    lean(limit_train_batches=2, limit_val_batches=0).fit(Model())
    messages = _key_warnings(recwarn)
    assert len(messages) == 1 and "`acc_step`" in messages[0] and "'acc'" in messages[0]
