"""Trainer behaviour: entry points, flags, properties and the errors that name the fix."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.demos.boring_classes import BoringDataModule, BoringModel, RandomDataset
from featherlight.utilities.exceptions import MisconfigurationException


def lean(**kwargs):
    base = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


# ------------------------------------------------------------------ entry points and return values
def test_fit_validate_test_predict_return_values():
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.step(batch))

        def test_step(self, batch, batch_idx):
            self.log("test_loss", self.step(batch))

    model = Model()
    trainer = lean(max_epochs=2)
    assert trainer.fit(model) is None
    assert trainer.global_step == 128 and trainer.current_epoch == 2
    val = trainer.validate(model, verbose=False)
    test = trainer.test(model, verbose=False)
    assert list(val[0]) == ["val_loss"] and isinstance(val[0]["val_loss"], float)
    assert list(test[0]) == ["test_loss"]
    preds = trainer.predict(model)
    assert len(preds) == 64 and preds[0].shape == (1, 2)
    assert trainer.predict(model, return_predictions=False) is None


def test_predict_several_dataloaders_returns_a_list_per_loader():
    trainer = lean()
    loaders = [DataLoader(RandomDataset(32, 4), batch_size=2), DataLoader(RandomDataset(32, 6), batch_size=2)]
    preds = trainer.predict(BoringModel(), loaders)
    assert [len(p) for p in preds] == [2, 3]


def test_validate_reports_one_dict_per_dataloader():
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("loss", self.step(batch))
            self.log("shared", 1.0, add_dataloader_idx=False)

    loaders = [DataLoader(RandomDataset(32, 4)), DataLoader(RandomDataset(32, 4))]
    out = lean().validate(Model(), loaders, verbose=False)
    assert sorted(out[0]) == ["loss/dataloader_idx_0", "shared"]
    assert sorted(out[1]) == ["loss/dataloader_idx_1", "shared"]


def test_datamodule_hooks_are_called_with_the_stage():
    calls = []

    class DM(BoringDataModule):
        def prepare_data(self):
            calls.append("prepare_data")

        def setup(self, stage):
            calls.append(f"setup:{stage}")
            super().setup(stage)

        def teardown(self, stage):
            calls.append(f"teardown:{stage}")

    dm = DM()
    trainer = lean(limit_train_batches=2, limit_val_batches=2)
    trainer.fit(BoringModel(), datamodule=dm)
    trainer.test(BoringModel(), datamodule=dm, verbose=False)
    assert calls == ["prepare_data", "setup:fit", "teardown:fit", "prepare_data", "setup:test", "teardown:test"]
    assert trainer.datamodule is dm


def test_datamodule_from_datasets():
    dm = L.LightningDataModule.from_datasets(train_dataset=RandomDataset(32, 8), val_dataset=RandomDataset(32, 4),
                                             batch_size=4)
    trainer = lean()
    trainer.fit(BoringModel(), datamodule=dm)
    assert trainer.num_training_batches == 2 and trainer.num_val_batches == [1]


def test_loaders_passed_to_fit_win_over_the_module_hooks():
    trainer = lean()
    trainer.fit(BoringModel(), train_dataloaders=DataLoader(RandomDataset(32, 10), batch_size=5))
    assert trainer.num_training_batches == 2


# ------------------------------------------------------------------ flags
def test_fast_dev_run_runs_n_batches_and_suppresses_logging(tmp_path):
    trainer = L.Trainer(fast_dev_run=3, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert trainer.global_step == 3 and trainer.num_val_batches == [3]
    # as in Lightning the checkpoint callback is kept, and saves nothing
    assert trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path == ""
    assert not list(tmp_path.rglob("*.ckpt"))
    assert type(trainer.logger).__name__ == "DummyLogger"


@pytest.mark.parametrize("value", [-1, "x", 1.5])
def test_fast_dev_run_invalid(value):
    with pytest.raises(MisconfigurationException, match="fast_dev_run"):
        L.Trainer(fast_dev_run=value)


def test_limit_fraction_and_int():
    trainer = lean(limit_train_batches=0.25, limit_val_batches=3)
    trainer.fit(BoringModel())
    assert trainer.num_training_batches == 16 and trainer.num_val_batches == [3]


def test_limit_fraction_giving_zero_batches_names_the_flag():
    trainer = lean(limit_train_batches=0.001)
    with pytest.raises(MisconfigurationException, match="limit_train_batches"):
        trainer.fit(BoringModel())


def test_overfit_batches_uses_the_same_batches_without_shuffle():
    seen = []

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(batch.clone())
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 64), shuffle=True)

    with pytest.warns(UserWarning, match="shuffling"):
        lean(max_epochs=2, overfit_batches=2, limit_val_batches=0).fit(Model())
    assert len(seen) == 4
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])


def test_max_steps_stops_mid_epoch():
    trainer = lean(max_epochs=-1, max_steps=10, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 10 and trainer.current_epoch == 1  # as Lightning: the cut epoch counts


def test_min_epochs_overrides_early_stop_request():
    class Model(BoringModel):
        def on_train_epoch_end(self):
            self.trainer.should_stop = True

    trainer = lean(max_epochs=5, min_epochs=3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.current_epoch == 3


def test_on_train_batch_start_minus_one_ends_the_epoch():
    class Model(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 3 else None

    trainer = lean(max_epochs=2, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.global_step == 6


def test_accumulate_estimated_stepping_batches():
    trainer = lean(max_epochs=3, accumulate_grad_batches=5, limit_train_batches=12, limit_val_batches=0)
    model = BoringModel()
    trainer.fit(model)
    assert trainer.estimated_stepping_batches == 9 == trainer.global_step


def test_estimated_stepping_batches_inside_configure_optimizers_loads_the_train_loader_once():
    calls = []

    class Model(BoringModel):
        def configure_optimizers(self):
            calls.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

        def train_dataloader(self):
            calls.append("train_dataloader")
            return super().train_dataloader()

    lean(max_epochs=2, limit_val_batches=0).fit(Model())
    assert calls == ["train_dataloader", 128]


def test_check_val_every_n_epoch_and_num_sanity_val_steps():
    counts = {"val": 0, "sanity": 0}

    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            counts["sanity" if self.trainer.sanity_checking else "val"] += 1

    lean(max_epochs=4, check_val_every_n_epoch=2, limit_train_batches=1, limit_val_batches=3,
         num_sanity_val_steps=2).fit(Model())
    assert counts == {"val": 6, "sanity": 2}


def test_val_check_interval_int_across_epochs():
    epochs_validated = []

    class Model(BoringModel):
        def on_validation_start(self):
            epochs_validated.append((self.current_epoch, self.trainer.progress.batch_idx))

    lean(max_epochs=3, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
         val_check_interval=6, check_val_every_n_epoch=None).fit(Model())
    assert epochs_validated == [(1, 1), (2, 3)]


def test_val_check_interval_larger_than_epoch_needs_check_val_every_n_epoch_none():
    with pytest.raises(ValueError, match="check_val_every_n_epoch=None"):
        lean(limit_train_batches=4, val_check_interval=6).fit(BoringModel())


def test_inference_mode_flag():
    modes = []

    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    lean(limit_val_batches=1).validate(Model(), verbose=False)
    lean(limit_val_batches=1, inference_mode=False).validate(Model(), verbose=False)
    assert modes == [(True, False), (False, False)]


def test_deterministic_flag_sets_torch_algorithms():
    lean(deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    lean(deterministic="warn")
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    with pytest.raises(MisconfigurationException, match="deterministic"):
        lean(deterministic="yes")


def test_detect_anomaly_names_the_op():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            return {"loss": torch.sqrt(self(batch).sum() * 0 - 1)}

    with pytest.raises(RuntimeError, match="SqrtBackward"):
        lean(detect_anomaly=True, limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_training_step_returning_none_skips_the_update():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    model = Model()
    before = model.layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="returned `None`"):
        lean(limit_train_batches=2, limit_val_batches=0).fit(model)
    assert not torch.equal(before, model.layer.weight)

    class AllNone(BoringModel):
        def training_step(self, batch, batch_idx):
            return None

    model = AllNone()
    before = model.layer.weight.detach().clone()
    lean(limit_train_batches=4, limit_val_batches=0).fit(model)
    assert torch.equal(before, model.layer.weight)


def test_barebones_disables_everything_and_log_is_a_no_op():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0)
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(barebones=True, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    assert trainer.loggers == [] and trainer.callbacks == [] and trainer.num_sanity_val_steps == 0
    with pytest.warns(UserWarning, match="barebones"):
        trainer.fit(Model())
    assert trainer.callback_metrics == {}
    with pytest.raises(ValueError, match="barebones"):
        L.Trainer(barebones=True, enable_progress_bar=True)


def test_profiler_simple_reports_the_loop(tmp_path):
    from featherlight.profilers import SimpleProfiler

    trainer = lean(profiler=SimpleProfiler(dirpath=tmp_path, filename="perf"), limit_train_batches=2,
                   limit_val_batches=1)
    trainer.fit(BoringModel())
    text = "".join(p.read_text() for p in tmp_path.glob("*perf*"))
    assert "run_training_batch" in text and "SingleDeviceStrategy.training_step" in text
    assert isinstance(lean(profiler="simple").profiler, SimpleProfiler)
    with pytest.raises(MisconfigurationException, match="profiler"):
        lean(profiler="fancy")


def test_configure_callbacks_replace_trainer_callbacks_of_the_same_type():
    class Marker(L.Callback):
        def __init__(self, tag):
            self.tag = tag

    class Model(BoringModel):
        def configure_callbacks(self):
            return [Marker("module")]

    trainer = lean(callbacks=[Marker("trainer")], limit_train_batches=1, limit_val_batches=0)
    trainer.fit(Model())
    assert [c.tag for c in trainer.callbacks if isinstance(c, Marker)] == ["module"]


def test_batch_transfer_hooks_change_the_batch():
    seen = []

    class Model(BoringModel):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            return batch * 0

        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch + 1

        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return super().training_step(batch, batch_idx)

    lean(limit_train_batches=1, limit_val_batches=0).fit(Model())
    assert torch.equal(seen[0], torch.ones(1, 32))


def test_state_and_stage_properties_during_hooks():
    seen = {}

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            seen["train"] = (self.trainer.state.fn, self.trainer.training, self.trainer.state.stage)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            key = "sanity" if self.trainer.sanity_checking else "val"
            seen[key] = (self.trainer.state.fn, self.trainer.validating, self.trainer.state.stage)

    trainer = lean(limit_train_batches=1, limit_val_batches=1)
    trainer.fit(Model())
    assert seen["train"] == ("fit", True, "train")
    assert seen["sanity"] == ("fit", False, "sanity_check")
    assert seen["val"] == ("fit", True, "validate")
    assert trainer.state.finished and trainer.state.stage is None


def test_csv_logger_log_dir_and_files(tmp_path):
    from featherlight.loggers import CSVLogger

    class Model(BoringModel):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("loss", out["loss"])
            return out

    trainer = lean(logger=CSVLogger(tmp_path), limit_train_batches=4, limit_val_batches=0, log_every_n_steps=2)
    trainer.fit(Model())
    assert trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text().strip() == "lr: 0.1"
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,step" and len(rows) == 3


def test_default_logger_is_tensorboard_when_installed_else_csv(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path)
    expected = "TensorBoardLogger"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        expected = "CSVLogger"
    assert type(trainer.logger).__name__ == expected
    assert trainer.log_dir.startswith(str(tmp_path))


# ------------------------------------------------------------------ errors that name the fix
def test_missing_training_step():
    class Model(L.LightningModule):
        def configure_optimizers(self):
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 4))

    with pytest.raises(MisconfigurationException, match="training_step"):
        lean().fit(Model())


def test_missing_configure_optimizers():
    class Model(BoringModel):
        configure_optimizers = L.LightningModule.configure_optimizers

    with pytest.raises(MisconfigurationException, match="configure_optimizers"):
        lean().fit(Model())


@pytest.mark.parametrize("bad", ["adam", {"lr": 1}, [1, 2]])
def test_configure_optimizers_bad_return(bad):
    class Model(BoringModel):
        def configure_optimizers(self):
            return bad

    with pytest.raises(MisconfigurationException, match="configure_optimizers"):
        lean().fit(Model())


def test_configure_optimizers_forms():
    def fit_with(ret):
        class Model(BoringModel):
            def configure_optimizers(self):
                return ret(self)

        trainer = lean(limit_train_batches=2, limit_val_batches=0)
        trainer.fit(Model())
        return trainer

    def opt(m):
        return torch.optim.SGD(m.parameters(), lr=0.1)

    assert len(fit_with(opt).optimizers) == 1
    assert len(fit_with(lambda m: [opt(m)]).optimizers) == 1
    t = fit_with(lambda m: (lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1)]))(opt(m)))
    assert len(t.lr_scheduler_configs) == 1 and t.lr_scheduler_configs[0].interval == "epoch"
    t = fit_with(lambda m: (lambda o: {"optimizer": o, "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.StepLR(o, 1), "interval": "step", "frequency": 2, "name": "s"}})(opt(m)))
    cfg = t.lr_scheduler_configs[0]
    assert (cfg.interval, cfg.frequency, cfg.name) == ("step", 2, "s")
    assert cfg.scheduler.last_epoch == 1  # 2 steps, frequency 2


def test_multiple_optimizers_need_manual_optimization():
    class Model(BoringModel):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(RuntimeError, match="only supported with manual optimization"):
        lean().fit(Model())


def test_no_training_dataloader():
    class Model(BoringModel):
        train_dataloader = L.LightningModule.train_dataloader

    with pytest.raises(MisconfigurationException, match="train_dataloaders"):
        lean().fit(Model())


def test_empty_training_dataloader():
    with pytest.raises(MisconfigurationException, match="empty"):
        lean().fit(BoringModel(), DataLoader(RandomDataset(32, 3), batch_size=4, drop_last=True))


@pytest.mark.parametrize("kwargs,match", [
    ({"accelerator": "tpu"}, "accelerator"),
    ({"precision": "17"}, "recision"),
    ({"limit_train_batches": 1.5}, "limit_train_batches"),
    ({"limit_val_batches": -1}, "limit_val_batches"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
    ({"gradient_clip_algorithm": "l3"}, "gradient_clip_algorithm"),
    ({"val_check_interval": 1.5}, "val_check_interval"),
    ({"devices": 0}, "devices"),
    ({"accelerator": "gpu"}, "accelerator"),
])
def test_bad_flag_values(kwargs, match):
    if kwargs.get("accelerator") == "gpu" and torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises((MisconfigurationException, ValueError), match=match):
        L.Trainer(**kwargs)


def test_training_step_dict_without_loss():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            return {"acc": 1.0}

    with pytest.raises(MisconfigurationException, match="'loss'"):
        lean().fit(Model())


def test_manual_optimization_rejects_accumulation_and_clipping():
    from featherlight.demos.boring_classes import ManualOptimBoringModel

    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches"):
        lean(accumulate_grad_batches=2).fit(ManualOptimBoringModel())
    with pytest.raises(MisconfigurationException, match="gradient_clip_val"):
        lean(gradient_clip_val=1.0).fit(ManualOptimBoringModel())


def test_model_must_be_a_lightning_module():
    with pytest.raises(TypeError, match="LightningModule"):
        lean().fit(torch.nn.Linear(1, 1))


def test_exception_calls_on_exception_and_marks_interrupted():
    seen = []

    class CB(L.Callback):
        def on_exception(self, trainer, pl_module, exception):
            seen.append(type(exception).__name__)

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            raise KeyboardInterrupt

    trainer = lean(callbacks=[CB()], limit_val_batches=0)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(Model())
    assert seen == ["KeyboardInterrupt"] and trainer.interrupted
