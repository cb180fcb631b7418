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
