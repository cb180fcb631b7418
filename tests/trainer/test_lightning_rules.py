"""Trainer flags, loop rules and messages that follow Lightning's behaviour (each pinned down from it)."""
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from torch.utils.data._utils.collate import default_collate

import featherlight as L
from featherlight.callbacks import Callback, ModelCheckpoint
from featherlight.demos.boring_classes import BoringModel, RandomDataset, RandomIterableDataset
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.warnings import PossibleUserWarning

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def lean(**kwargs):
    return L.Trainer(**{**QUIET, "max_epochs": 1, **kwargs})


# ------------------------------------------------------------------ flags
def test_env_vars_fill_in_unset_flags_and_explicit_ones_win(monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "7")
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    monkeypatch.setenv("PL_TRAINER_DEFAULT_ROOT_DIR", "/tmp/some/where")  # not a literal: the string itself
    trainer = L.Trainer()
    assert trainer.max_steps == 7 and trainer.logger is None and trainer.default_root_dir == "/tmp/some/where"
    trainer = L.Trainer(max_steps=42, logger=True)
    assert trainer.max_steps == 42 and trainer.logger is not None


def test_max_epochs_is_resolved_when_a_fit_starts(tmp_path):
    trainer = lean(max_epochs=None, default_root_dir=tmp_path, max_steps=1)
    assert trainer.max_epochs is None
    trainer.fit(BoringModel())
    assert trainer.max_epochs == -1  # bounded by max_steps: no epoch limit
    trainer = lean(max_epochs=None, default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=0)
    model = BoringModel()
    model.on_train_start = lambda: setattr(trainer, "should_stop", True)
    with pytest.warns(PossibleUserWarning, match="`max_epochs` was not set. Setting it to 1000 epochs"):
        trainer.fit(model)
    assert trainer.max_epochs == 1000


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_epochs": -100}, "`max_epochs` must be a non-negative integer or -1. You passed in -100."),
    ({"max_steps": -2}, "`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in -2."),
    ({"limit_train_batches": 1.2}, "You have passed invalid value 1.2 for limit_train_batches, it has to be in "
                                   "[0.0, 1.0] or an int."),
    ({"overfit_batches": -0.1}, "You have passed invalid value -0.1 for overfit_batches"),
    ({"val_check_interval": 1.2}, "You have passed invalid value 1.2 for val_check_interval"),
    ({"check_val_every_n_epoch": 1.2}, "`check_val_every_n_epoch` should be an integer, found 1.2."),
    ({"val_check_interval": 0.5, "check_val_every_n_epoch": None}, "`val_check_interval` should be an integer"),
    ({"reload_dataloaders_every_n_epochs": -1}, "`reload_dataloaders_every_n_epochs` should be an int >= 0, got -1."),
    ({"gradient_clip_algorithm": "norm2"}, "`gradient_clip_algorithm` norm2 is invalid."),
])
def test_flag_errors_start_with_lightnings_sentence(kwargs, message):
    with pytest.raises(MisconfigurationException) as err:
        L.Trainer(**kwargs)
    assert str(err.value).startswith(message)


def test_gradient_clip_val_type_error():
    with pytest.raises(TypeError, match=r"`gradient_clip_val` should be an int or a float. Got \(1, 2\)."):
        L.Trainer(gradient_clip_val=(1, 2))


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("limit_train_batches", 1, "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used."),
    ("limit_val_batches", 1.0, "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used."),
    ("val_check_interval", 1, "`Trainer(val_check_interval=1)` was configured so validation will run after every "
                              "batch."),
    ("val_check_interval", 1.0, "`Trainer(val_check_interval=1.0)` was configured so validation will run at the end "
                                "of the training epoch."),
])
def test_explicit_one_batch_or_all_is_announced(caplog, flag, value, expected):
    with caplog.at_level(logging.INFO, logger="featherlight"):
        L.Trainer(**{flag: value})
    assert expected in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="featherlight"):
        L.Trainer()
    assert "was configured so" not in caplog.text


def test_default_root_dir_expands_home_and_loggers_none_is_empty():
    assert L.Trainer(default_root_dir="~/trainer").default_root_dir == str(Path.home() / "trainer")
    assert L.Trainer(default_root_dir=Path("~/trainer")).default_root_dir == str(Path.home() / "trainer")
    trainer = L.Trainer()
    trainer.loggers = None
    assert trainer.loggers == [] and trainer.logger is None


def test_fast_dev_run_one_reads_as_true_and_enable_validation(tmp_path):
    trainer = L.Trainer(fast_dev_run=1, default_root_dir=tmp_path, enable_progress_bar=False)
    assert trainer.fast_dev_run is True and trainer.max_epochs == 1 and trainer.limit_val_batches == 1
    trainer.fit(BoringModel())
    assert trainer.enable_validation
    no_loader = BoringModel()
    no_loader.val_dataloader = None  # no validation data: nothing to validate on
    trainer = lean(limit_train_batches=1)
    trainer.fit(no_loader)
    assert not trainer.enable_validation
    trainer = lean(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert not trainer.enable_validation


def test_init_module_creates_parameters_on_the_trainers_device_and_dtype():
    with L.Trainer(accelerator="cpu").init_module():
        assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    with L.Trainer(accelerator="cpu", precision="64-true").init_module():
        assert torch.nn.Linear(2, 2).weight.dtype == torch.float64
    assert torch.nn.Linear(2, 2).weight.dtype == torch.float32


def test_evaluating_without_a_model_raises_type_error():
    for fn in ("validate", "test", "predict"):
        with pytest.raises(TypeError, match=rf"`Trainer.{fn}\(\)` requires a `LightningModule` when it hasn't been"):
            getattr(L.Trainer(), fn)()
    with pytest.raises(TypeError, match="must be a `LightningModule`, got `Linear`"):
        L.Trainer().fit(torch.nn.Linear(1, 1))


# ------------------------------------------------------------------ checkpoint paths
def test_evaluating_the_previous_fit_warns_and_uses_the_best_checkpoint(tmp_path):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, enable_progress_bar=False,
                        enable_model_summary=False, logger=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    with pytest.warns(UserWarning, match=r"`.test\(ckpt_path=None\)` was called without a model. The best model of "
                                         r"the previous `fit` call will be used"):
        trainer.test(verbose=False)
    assert trainer.ckpt_path == trainer.checkpoint_callback.best_model_path


def test_best_checkpoint_messages(tmp_path):
    trainer = lean(limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    with pytest.raises(ValueError, match=r'`.test\(ckpt_path="best"\)` is set but `ModelCheckpoint` is not '
                                         r'configured.'):
        trainer.test(ckpt_path="best")
    trainer = L.Trainer(fast_dev_run=True, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(BoringModel())
    assert trainer.checkpoint_callback is not None  # kept under fast_dev_run, saving nothing
    with pytest.raises(ValueError, match=r'You cannot execute `.validate\(ckpt_path="best"\)` with `fast_dev_run'):
        trainer.validate(ckpt_path="best")


# ------------------------------------------------------------------ the training loop
def test_none_batches_from_the_collate_function_are_skipped_with_a_warning(tmp_path):
    seen = []

    class Model(BoringModel):
        counter = 0

        def collate(self, batch):
            self.counter += 1
            return None if self.counter % 2 else default_collate(batch)

        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 4), collate_fn=self.collate)

        def training_step(self, batch, batch_idx):
            assert batch is not None
            return super().training_step(batch, batch_idx)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(outputs is None)

    trainer = lean(limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="train_dataloader yielded None. If this was on purpose, ignore this warning"):
        trainer.fit(Model())
    assert seen == [True, False, True, False]
    assert trainer.global_step == 2


def test_steps_written_without_batch_idx():
    class Model(BoringModel):
        def training_step(self, batch):
            return super().training_step(batch, 0)

        def validation_step(self, batch):
            self.log("v", 1.0)

        def predict_step(self, batch):
            return self(batch)

    model = Model()
    trainer = lean(limit_train_batches=2, limit_val_batches=2, limit_predict_batches=2)
    trainer.fit(model)
    assert trainer.global_step == 2 and "v" in trainer.callback_metrics
    assert len(trainer.predict(model)) == 2


@pytest.mark.parametrize("inference_mode", [True, False])
@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_evaluation_start_and_end_hooks_run_without_gradients(inference_mode, fn):
    seen = []

    class Model(BoringModel):
        def record(self):
            seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

        on_validation_start = on_test_start = on_predict_start = record
        on_validation_end = on_test_end = on_predict_end = record

    getattr(lean(inference_mode=inference_mode, limit_val_batches=1, limit_test_batches=1,
                 limit_predict_batches=1), fn)(Model())
    assert seen == [(False, inference_mode)] * 2


def test_estimated_stepping_batches_with_only_max_steps(tmp_path):
    trainer = lean(max_epochs=None, max_steps=100, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert trainer.estimated_stepping_batches == 100  # not one epoch's 64


def test_min_epochs_keeps_training_after_a_stop_request_with_lightnings_info_line(caplog):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    with caplog.at_level(logging.INFO, logger="featherlight"):
        trainer = lean(max_epochs=None, min_epochs=3, limit_train_batches=2, limit_val_batches=0)
        trainer.fit(Model())
    assert trainer.current_epoch == 3
    message = "Trainer was signaled to stop but the required `min_epochs=3` or `min_steps=None` has not been met."
    assert caplog.text.count(message) == 1


def test_small_epoch_warns_about_the_logging_interval(tmp_path):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, log_every_n_steps=5,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(PossibleUserWarning, match=r"The number of training batches \(3\) is smaller than the logging "
                                                 r"interval Trainer\(log_every_n_steps=5\)"):
        trainer.fit(BoringModel())


@pytest.mark.parametrize(("sanity", "every", "reload", "expected"), [
    (0, 3, 4, [2, 8]), (1, 3, 4, [2, 8]), (0, 2, 1, [1, 3, 5, 7, 9]), (1, 1, 2, [2, 4, 6, 8]), (0, 1, 2, [0, 2, 4, 6, 8]),
])
def test_val_dataloader_reload_epochs(sanity, every, reload, expected):
    reloads = []

    class Model(BoringModel):
        def val_dataloader(self):
            if not self.trainer.sanity_checking:
                reloads.append(self.current_epoch)
            return super().val_dataloader()

    lean(max_epochs=10, limit_train_batches=1, limit_val_batches=1, check_val_every_n_epoch=every,
         reload_dataloaders_every_n_epochs=reload, num_sanity_val_steps=sanity).fit(Model())
    assert reloads == expected


def test_fraction_limits_on_a_loader_without_length_name_lightnings_rule():
    model = BoringModel()
    model.train_dataloader = lambda: DataLoader(RandomIterableDataset(32, 8))
    with pytest.raises(MisconfigurationException, match=r"When using an `IterableDataset`, "
                                                        r"`Trainer\(limit_train_batches\)` must be `1.0` or an int"):
        lean(limit_train_batches=0.5).fit(model)


def test_overfit_batches_reads_train_and_val_in_order():
    class Model(BoringModel):
        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 64), shuffle=True)

        def val_dataloader(self):
            return DataLoader(RandomDataset(32, 64), shuffle=True)

    trainer = lean(overfit_batches=2)
    with pytest.warns(UserWarning, match="You requested to overfit but enabled train dataloader shuffling"):
        trainer.fit(Model())
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert isinstance(trainer.val_dataloaders.sampler, SequentialSampler)


def test_resume_from_an_epoch_end_checkpoint_starts_at_the_next_epoch(tmp_path):
    seen = []

    class Model(BoringModel):
        def on_train_start(self):
            seen.append(self.current_epoch)

    flags = dict(default_root_dir=tmp_path, limit_train_batches=2, limit_val_batches=0, enable_progress_bar=False,
                 enable_model_summary=False, logger=False)
    L.Trainer(max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], **flags).fit(Model())
    trainer = L.Trainer(max_epochs=3, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], **flags)
    trainer.fit(Model(), ckpt_path=tmp_path / "last.ckpt")
    assert seen == [0, 2]
    assert (trainer.current_epoch, trainer.global_step) == (3, 6)


def test_run_starts_with_empty_metric_dicts():
    class Check(Callback):
        def on_test_start(self, trainer, pl_module):
            assert trainer.callback_metrics == {} and trainer.logged_metrics == {}

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("train_metric", 1.0)
            return super().training_step(batch, batch_idx)

    model = Model()
    trainer = lean(limit_train_batches=1, limit_val_batches=0, limit_test_batches=1, callbacks=[Check()])
    trainer.fit(model)
    assert "train_metric" in trainer.callback_metrics
    trainer.test(model, verbose=False)


def test_missing_callbacks_on_resume_are_named(tmp_path):
    class Stateful(Callback):
        def state_dict(self):
            return {"a": 1}

    flags = dict(default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=0, enable_progress_bar=False,
                 enable_model_summary=False, logger=False)
    trainer = L.Trainer(max_epochs=1, callbacks=[Stateful()], **flags)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    with pytest.warns(UserWarning, match=r"Please add the following callbacks: \[.*Stateful'\]"):
        L.Trainer(max_epochs=2, **flags).fit(BoringModel(), ckpt_path=tmp_path / "c.ckpt")


def test_module_created_under_init_module_reports_that_device():
    with L.Trainer(accelerator="cpu").init_module():
        assert BoringModel().device == torch.device("cpu")
    with torch.device("meta"):
        assert BoringModel().device == torch.device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_init_module_on_the_gpu():
    with L.Trainer(accelerator="gpu", devices=1).init_module():
        model = BoringModel()
    assert model.device == torch.device("cuda:0") and model.layer.weight.device.type == "cuda"


@pytest.mark.parametrize("shape", ["list1", "list2", "dict"])
def test_several_training_loaders_keep_their_shape(shape):
    seen = []

    def loader():
        return DataLoader(RandomDataset(32, 8), batch_size=4)

    class Model(BoringModel):
        def train_dataloader(self):
            return {"a": loader(), "b": loader()} if shape == "dict" else [loader() for _ in range(int(shape[-1]))]

        def training_step(self, batch, batch_idx):
            seen.append(type(batch).__name__ if shape == "dict" else len(batch))
            first = batch["a"] if shape == "dict" else batch[0]
            return super().training_step(first, batch_idx)

    trainer = lean(limit_val_batches=0)
    trainer.fit(Model())
    # the public attribute is what the hook returned (prepared loaders), each batch has the same shape
    assert isinstance(trainer.train_dataloader, dict if shape == "dict" else list)
    assert seen == (["dict"] * 2 if shape == "dict" else [int(shape[-1])] * 2)


def test_barebones_log_and_log_dict_warn_once_per_run():
    model = BoringModel()
    model.trainer = L.Trainer(barebones=True)
    with pytest.warns(UserWarning, match=r"`self.log\(\)` but `Trainer\(barebones=True\)` is configured"):
        model.log("foo", 1.0)
    with pytest.warns(UserWarning, match=r"`self.log_dict\(\)` but `Trainer\(barebones=True\)` is configured"):
        model.log_dict({"foo": 1.0})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.log("foo", 1.0)  # said once per run already


# ------------------------------------------------------------------ found by running lightning-hydra-template
class PlateauOnValLoss(BoringModel):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.step(batch))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def _plateau_trainer(tmp_path, epochs):
    return L.Trainer(default_root_dir=tmp_path, max_epochs=epochs, limit_train_batches=4, limit_val_batches=2,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], logger=False,
                     enable_progress_bar=False, enable_model_summary=False)


def test_resuming_from_an_epoch_end_checkpoint_with_a_plateau_scheduler(tmp_path):
    """The monitor a plateau scheduler steps on at the end of the resumed epoch was logged before the interruption:
    the checkpoint carries it, so the resumed run steps exactly as the uninterrupted one (Lightning skips plateau
    schedulers while restarting; featherlight failed the run with "not available")."""
    L.seed_everything(0)
    reference = _plateau_trainer(tmp_path / "reference", 3)
    reference.fit(PlateauOnValLoss())
    L.seed_everything(0)
    _plateau_trainer(tmp_path / "run", 1).fit(PlateauOnValLoss())
    resumed = _plateau_trainer(tmp_path / "run", 3)
    resumed.fit(PlateauOnValLoss(), ckpt_path=str(tmp_path / "run" / "last.ckpt"))
    expected = reference.lr_scheduler_configs[0].scheduler.state_dict()
    assert resumed.lr_scheduler_configs[0].scheduler.state_dict() == expected and expected["last_epoch"] == 3


def test_a_plateau_monitor_the_checkpoint_lacks_skips_the_resumed_epoch_as_in_lightning(tmp_path):
    _plateau_trainer(tmp_path, 1).fit(PlateauOnValLoss())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    for state in (checkpoint["featherlight_loop"],):
        assert "val_loss" in state.pop("monitors")  # as a checkpoint from before this was recorded
    torch.save(checkpoint, tmp_path / "older.ckpt")
    resumed = _plateau_trainer(tmp_path, 3)
    resumed.fit(PlateauOnValLoss(), ckpt_path=str(tmp_path / "older.ckpt"))
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == 2  # epochs 1 and 2 stepped, the resumed one not
    with pytest.raises(MisconfigurationException, match="val_loss which is not available"):
        lean(limit_train_batches=2, limit_val_batches=0).fit(PlateauOnValLoss())  # a fresh run still says so


def test_a_reference_to_callback_metrics_keeps_the_fit_values_after_test():
    """`train_metrics = trainer.callback_metrics; trainer.test(...)`: Lightning starts the test with new dicts, so
    the reference still holds the fit's values (templates merge both afterwards)."""
    trainer = lean(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2)

    class Logs(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train_loss", out["loss"])
            return out

        def test_step(self, batch, batch_idx):
            self.log("test_loss", self.step(batch))

    model = Logs()
    trainer.fit(model)
    train_metrics = trainer.callback_metrics
    trainer.test(model, verbose=False)
    assert "train_loss" in train_metrics and "test_loss" not in train_metrics
    assert "test_loss" in trainer.callback_metrics and "train_loss" not in trainer.callback_metrics
