"""Misuse that used to go silently wrong (or fail far from the cause) gets an error or warning naming the fix; the
correct use next to each stays silent."""
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import featherlight as L
from featherlight.demos.boring_classes import BoringModel, RandomDataset
from featherlight.loggers import CSVLogger
from featherlight.utilities.exceptions import MisconfigurationException


def lean(**kwargs):
    base = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


def _messages(record):
    return [str(w.message) for w in record]


# ------------------------------------------------------------------ empty validation loader (item 1)
class EmptyValModel(BoringModel):
    def val_dataloader(self):
        return DataLoader(RandomDataset(32, 0))


def test_empty_validation_loader_warns_and_names_the_fix():
    trainer = lean(limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"Total length of `DataLoader` across ranks is zero") as record:
        trainer.fit(EmptyValModel())
    assert trainer.num_val_batches == [0]
    matching = [m for m in _messages(record) if "across ranks is zero" in m]
    assert len(matching) == 1  # once per run, though loaded for the sanity check and each epoch's validation
    assert "limit_val_batches=0" in matching[0] and "drop_last" in matching[0]


def test_empty_validate_loader_warns():
    with pytest.warns(UserWarning, match=r"The val_dataloader has 0 batches"):
        lean().validate(EmptyValModel())


def test_non_empty_validation_loader_is_silent():
    trainer = lean(limit_train_batches=2, limit_val_batches=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(BoringModel())
    assert not [m for m in _messages(record) if "across ranks is zero" in m]


def test_empty_validation_loader_turned_off_is_silent():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lean(limit_train_batches=2, limit_val_batches=0).fit(EmptyValModel())
    assert not [m for m in _messages(record) if "across ranks is zero" in m]


# ------------------------------------------------------------------ val_check_interval=0 (item 2)
def test_val_check_interval_zero_is_refused_at_construction():
    with pytest.raises(MisconfigurationException, match=r"`val_check_interval=0` is invalid.*at least 1"):
        L.Trainer(val_check_interval=0)


@pytest.mark.parametrize("value", [1, 3, 0.0, 0.5, 1.0, None])
def test_valid_val_check_interval_is_accepted(value):
    assert L.Trainer(val_check_interval=value, logger=False).val_check_interval is not None


# ------------------------------------------------------------------ logger="csv" (item 3)
@pytest.mark.parametrize("value", ["csv", "tensorboard", ["csv"], ("tensorboard",), {"csv": 1}])
def test_logger_given_as_a_string_is_a_type_error_naming_the_flag(value):
    with pytest.raises(TypeError, match=r"`Trainer\(logger=\.\.\.\)` takes a Logger instance"):
        L.Trainer(logger=value)


def test_logger_string_names_the_logger_class_it_meant():
    with pytest.raises(TypeError, match=r"logger=CSVLogger\(save_dir=\.\.\.\)"):
        L.Trainer(logger="csv")


def test_logger_class_instead_of_instance_is_a_type_error():
    with pytest.raises(TypeError, match=r"got the class `CSVLogger`.*CSVLogger\(save_dir=\.\.\.\)"):
        L.Trainer(logger=CSVLogger)


@pytest.mark.parametrize("value", [5, [None]])
def test_logger_of_other_types_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"`Trainer\(logger=\.\.\.\)` takes a Logger instance"):
        L.Trainer(logger=value)


def test_logger_forms_that_work_are_accepted(tmp_path):
    one, two = CSVLogger(tmp_path), CSVLogger(tmp_path, name="b")
    assert L.Trainer(logger=one).loggers == [one]
    assert L.Trainer(logger=[one, two]).loggers == [one, two]
    assert L.Trainer(logger=(x for x in (one, two))).loggers == [one, two]  # a generator is read once
    assert L.Trainer(logger=False).loggers == []
    assert L.Trainer(logger=[]).loggers == []
    assert len(L.Trainer(logger=True).loggers) == 1
    assert len(L.Trainer().loggers) == 1


# ------------------------------------------------------------------ IterableDataset that yields nothing (item 12)
class Empty(IterableDataset):
    def __iter__(self):
        return iter(())


class Few(IterableDataset):
    def __iter__(self):
        return iter(torch.randn(4, 32))


def _iterable_model(dataset):
    class Model(BoringModel):
        def train_dataloader(self):
            return DataLoader(dataset, batch_size=2)

    return Model()


def test_empty_iterable_dataset_warns_once_that_nothing_was_trained():
    trainer = lean(max_epochs=3, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"The training dataloader yielded no batches") as record:
        trainer.fit(_iterable_model(Empty()))
    assert trainer.global_step == 0
    matching = [m for m in _messages(record) if "yielded no batches" in m]
    assert len(matching) == 1  # at the first empty epoch, not each one
    assert "IterableDataset" in matching[0] and "limit_train_batches=0" in matching[0]


def test_iterable_dataset_with_batches_is_silent():
    trainer = lean(max_epochs=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(_iterable_model(Few()))
    assert trainer.global_step == 4
    assert not [m for m in _messages(record) if "yielded no batches" in m]


def test_stopping_at_the_first_batch_on_purpose_is_not_an_empty_loader():
    class Model(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lean(limit_train_batches=2, limit_val_batches=0).fit(Model())
    assert not [m for m in _messages(record) if "yielded no batches" in m]


# ------------------------------------------------------------------ resuming past max_epochs / max_steps (item 7)
def _fit_and_save(tmp_path, name="done.ckpt", **kwargs):
    trainer = lean(limit_train_batches=4, limit_val_batches=0, **kwargs)
    trainer.fit(BoringModel())
    path = str(tmp_path / name)
    trainer.save_checkpoint(path)
    return path, trainer


def test_resume_with_max_epochs_below_the_checkpoint_raises_lightnings_error(tmp_path):
    path, _ = _fit_and_save(tmp_path, max_epochs=3)
    trainer = lean(max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    with pytest.raises(MisconfigurationException,
                       match=r"^You restored a checkpoint with current_epoch=3, but you have set "
                             r"Trainer\(max_epochs=1\)\..*set it above 3"):
        trainer.fit(BoringModel(), ckpt_path=path)


def test_resume_with_max_steps_below_the_checkpoint_warns(tmp_path):
    path, _ = _fit_and_save(tmp_path, max_epochs=3)  # 12 steps
    trainer = lean(max_epochs=-1, max_steps=5, limit_train_batches=4, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"global_step=12, but you have set Trainer\(max_steps=5\).*above 12"):
        trainer.fit(BoringModel(), ckpt_path=path)
    assert trainer.global_step == 12


def test_resume_inside_an_epoch_max_epochs_already_reached_warns(tmp_path):
    class SaveMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1 and trainer.progress.batch_idx == 1:
                trainer.save_checkpoint(str(tmp_path / "mid.ckpt"))

    lean(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[SaveMidEpoch()]).fit(BoringModel())
    trainer = lean(max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"taken inside epoch 1.*max_epochs=1.*at least 2"):
        trainer.fit(BoringModel(), ckpt_path=str(tmp_path / "mid.ckpt"))


def test_resume_with_higher_limits_is_silent_and_trains(tmp_path):
    path, _ = _fit_and_save(tmp_path, max_epochs=2)
    trainer = lean(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(BoringModel(), ckpt_path=path)
    assert trainer.global_step == 12
    assert not [m for m in _messages(record) if "You restored a checkpoint" in m]


# ------------------------------------------------------------------ another optimizer on resume (item 8)
def _model(make_optimizer):
    class Model(BoringModel):
        def configure_optimizers(self):
            return make_optimizer(self)

    return Model()


_ADAM = lambda m: torch.optim.Adam(m.parameters(), lr=0.01)  # noqa: E731
_SGD = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # noqa: E731


def _adam_checkpoint(tmp_path):
    trainer = lean(limit_train_batches=2, limit_val_batches=0)
    trainer.fit(_model(_ADAM))
    path = str(tmp_path / "adam.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_resuming_adam_into_sgd_raises_naming_both(tmp_path):
    path = _adam_checkpoint(tmp_path)
    trainer = lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"optimizer 0 was Adam .* now returns SGD.*configure_optimizers"):
        trainer.fit(_model(_SGD), ckpt_path=path)


def test_resuming_a_checkpoint_without_recorded_types_into_another_class_raises(tmp_path):
    """A Lightning checkpoint records no optimizer class: the parameter groups' settings tell Adam from SGD."""
    path = _adam_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["featherlight_optimizer_types"]
    torch.save(checkpoint, path)
    trainer = lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"saved from another optimizer class than the SGD.*'betas'.*lack.*'momentum'"):
        trainer.fit(_model(_SGD), ckpt_path=path)
    # the same class resumes
    lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(_model(_ADAM), ckpt_path=path)


def test_resuming_a_lightning_adam_checkpoint_into_sgd_raises(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.demos.boring_classes import BoringModel as PLBoringModel

    class PLModel(PLBoringModel):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(PLModel())
    path = str(tmp_path / "lightning.ckpt")
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match=r"saved from another optimizer class than the SGD"):
        lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(_model(_SGD), ckpt_path=path)


def test_resuming_with_another_number_of_optimizers_raises(tmp_path):
    path = _adam_checkpoint(tmp_path)

    class TwoOptimizers(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(self.step(batch))
            for opt in self.optimizers():
                opt.step()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters()), torch.optim.Adam(self.parameters())

    with pytest.raises(ValueError, match=r"holds 1 optimizer state\(s\), but `configure_optimizers` now returns 2"):
        lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(TwoOptimizers(), ckpt_path=path)


def test_resuming_with_other_param_groups_raises(tmp_path):
    path = _adam_checkpoint(tmp_path)
    groups = lambda m: torch.optim.Adam([{"params": [m.layer.weight]}, {"params": [m.layer.bias]}])  # noqa: E731
    with pytest.raises(ValueError, match=r"optimizer 0 \(Adam\) had 1 parameter group\(s\), but now has 2"):
        lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(_model(groups), ckpt_path=path)


def test_optimizer_states_emptied_in_on_load_checkpoint_start_fresh_optimizers(tmp_path):
    path = _adam_checkpoint(tmp_path)

    class Model(BoringModel):
        def configure_optimizers(self):
            return _SGD(self)

        def on_load_checkpoint(self, checkpoint):
            checkpoint["optimizer_states"] = []

    trainer = lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(Model(), ckpt_path=path)
    assert trainer.global_step == 4
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.9


def test_resuming_the_same_optimizer_loads_its_state(tmp_path):
    path = _adam_checkpoint(tmp_path)
    trainer = lean(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(_model(_ADAM), ckpt_path=path)
    assert trainer.optimizers[0].state_dict()["state"][0]["step"].item() == 4
    assert not [m for m in _messages(record) if "optimizer" in m.lower()]


# ------------------------------------------------------------------ ckpt_path="last" (item 10)
from featherlight.callbacks import ModelCheckpoint  # noqa: E402
from featherlight.utilities.exceptions import WeightsOnlyCheckpointError  # noqa: E402


def _fit_with_checkpoints(dirpath, max_epochs=2, **mc_kwargs):
    trainer = lean(max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=0, enable_checkpointing=True,
                   callbacks=[ModelCheckpoint(dirpath=dirpath, **mc_kwargs)])
    trainer.fit(BoringModel())
    return trainer


def _newer(path, than):
    """Make ``path``'s modification time later than ``than``'s, without sleeping."""
    later = os.stat(than).st_mtime_ns + 10_000_000_000
    os.utime(path, ns=(later, later))


def _resume_last(dirpath, max_epochs=3):
    trainer = lean(max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=0, enable_checkpointing=True,
                   callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True)])
    trainer.fit(BoringModel(), ckpt_path="last")
    return trainer


def test_last_prefers_last_ckpt_over_a_weights_only_export_saved_later(tmp_path):
    dirpath = tmp_path / "ckpts"
    trainer = _fit_with_checkpoints(dirpath, save_last=True)
    export = dirpath / "export.ckpt"
    trainer.save_checkpoint(export, weights_only=True)
    _newer(export, dirpath / "last.ckpt")
    resumed = _resume_last(dirpath)
    assert resumed.ckpt_path == str(dirpath / "last.ckpt")
    assert resumed.global_step == 12


def test_last_prefers_last_ckpt_over_a_full_checkpoint_saved_later(tmp_path):
    dirpath = tmp_path / "ckpts"
    trainer = _fit_with_checkpoints(dirpath, save_last=True)
    manual = dirpath / "manual.ckpt"
    trainer.save_checkpoint(manual)
    _newer(manual, dirpath / "last.ckpt")
    assert _resume_last(dirpath).ckpt_path == str(dirpath / "last.ckpt")


def test_last_without_last_ckpt_skips_weights_only_files_for_a_full_checkpoint(tmp_path):
    dirpath = tmp_path / "ckpts"
    trainer = _fit_with_checkpoints(dirpath)  # epoch=1-step=8.ckpt only
    export = dirpath / "export.ckpt"
    trainer.save_checkpoint(export, weights_only=True)
    _newer(export, dirpath / "epoch=1-step=8.ckpt")
    resumed = _resume_last(dirpath)
    assert resumed.ckpt_path == str(dirpath / "epoch=1-step=8.ckpt") and resumed.global_step == 12


def test_last_warns_when_a_skipped_weights_only_file_is_further_along(tmp_path):
    dirpath = tmp_path / "ckpts"
    _fit_with_checkpoints(dirpath, max_epochs=1)  # epoch=0-step=4.ckpt
    further = _fit_with_checkpoints(tmp_path / "elsewhere", max_epochs=2)
    further.save_checkpoint(dirpath / "weights.ckpt", weights_only=True)  # global_step 8
    with pytest.warns(UserWarning, match=r"weights_only=True.*hold\(s\) a later step than it \(global_step=4\)"):
        resumed = _resume_last(dirpath)
    assert resumed.ckpt_path == str(dirpath / "epoch=0-step=4.ckpt")


def test_last_with_only_weights_only_checkpoints_raises_a_clear_error(tmp_path):
    dirpath = tmp_path / "ckpts"
    _fit_with_checkpoints(dirpath, save_last=True, save_weights_only=True)
    with pytest.raises(WeightsOnlyCheckpointError) as info:
        _resume_last(dirpath)
    err = info.value
    assert isinstance(err, KeyError)  # Lightning's type for this error
    assert str(err).startswith("Trying to restore optimizer state but checkpoint contains only the model.")
    assert "load_from_checkpoint" in str(err) and "last.ckpt" in str(err)


def test_last_for_validate_accepts_a_weights_only_checkpoint(tmp_path):
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("x", 1.0)

    dirpath = tmp_path / "ckpts"
    _fit_with_checkpoints(dirpath, save_last=True, save_weights_only=True)
    trainer = lean(enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=dirpath)])
    trainer.validate(Model(), ckpt_path="last", verbose=False)
    assert trainer.ckpt_path == str(dirpath / "last.ckpt")


def test_explicit_weights_only_path_in_fit_is_a_readable_key_error(tmp_path):
    trainer = _fit_with_checkpoints(tmp_path / "ckpts")
    path = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    with pytest.raises(KeyError, match=r"^Trying to restore optimizer state but checkpoint contains only the model"):
        lean(max_epochs=3).fit(BoringModel(), ckpt_path=path)


def test_last_finds_checkpoints_in_a_directory_named_like_a_glob_pattern(tmp_path):
    dirpath = tmp_path / "runs" / "[lr=0.1]"
    _fit_with_checkpoints(dirpath, save_last=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resumed = _resume_last(dirpath)
    assert not [m for m in _messages(record) if "no last checkpoint" in m]
    assert resumed.ckpt_path == str(dirpath / "last.ckpt") and resumed.global_step == 12
    assert not (dirpath / "last-v1.ckpt").exists()


def test_a_mock_logger_is_accepted():
    """Lightning's tests pass a MagicMock as the logger (it answers every attribute, even `__fspath__`)."""
    from unittest import mock

    logger = mock.MagicMock(name="logger")
    del logger.__iter__
    assert L.Trainer(logger=logger).loggers == [logger]
