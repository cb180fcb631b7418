"""``load_from_checkpoint`` after ``__init__`` changed: saved hyperparameters it no longer takes (a renamed argument)
are warned about with their values, and named if the weights then do not fit; the cases where leaving them out is
right stay silent."""
import warnings

import pytest
import torch

import featherlight as L
from featherlight.core.saving import HPARAMS_INIT_KEY


class Saved(L.LightningModule):
    def __init__(self, hidden=8, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, hidden)


class Renamed(L.LightningModule):  # `hidden` became `width` since the checkpoint was saved
    def __init__(self, width=8, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, width)


def _save(module, path):
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "hparams_name": "kwargs", HPARAMS_INIT_KEY: sorted(module.hparams)}, path)
    return path


def _save_with_trainer(cls, path, **kwargs):
    """A real checkpoint of ``cls(**kwargs)``, written by the trainer."""
    class Fit(cls):
        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Fit(**kwargs), torch.utils.data.DataLoader(torch.randn(4, 4), batch_size=4))
    trainer.save_checkpoint(path)
    return path


def _silent(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = fn()
    assert not [str(w.message) for w in record if "no longer takes" in str(w.message)]
    return out


def test_renamed_argument_is_warned_about_with_its_saved_value(tmp_path):
    path = _save_with_trainer(Saved, tmp_path / "a.ckpt", hidden=8)
    with pytest.warns(UserWarning, match=r"include hidden=8, which `Renamed.__init__` no longer takes.*<new_name>=") \
            as record:
        Renamed.load_from_checkpoint(path)
    assert not [str(w.message) for w in record if "lr=" in str(w.message)]  # `lr` was passed: not named


def test_shape_mismatch_error_names_the_dropped_hyperparameters(tmp_path):
    path = _save_with_trainer(Saved, tmp_path / "a.ckpt", hidden=16)
    with pytest.warns(UserWarning, match="hidden=16"):
        with pytest.raises(RuntimeError, match=r"size mismatch(.|\n)*hyperparameters hidden=16 were not passed to "
                                               r"`Renamed.__init__`.*likely why the weights do not fit"):
            Renamed.load_from_checkpoint(path)


def test_passing_the_new_name_silences_it_and_loads(tmp_path):
    path = _save_with_trainer(Saved, tmp_path / "a.ckpt", hidden=16)
    model = _silent(lambda: Renamed.load_from_checkpoint(path, width=16))
    assert model.layer.out_features == 16


def test_unchanged_init_is_silent(tmp_path):
    path = _save_with_trainer(Saved, tmp_path / "a.ckpt", hidden=16)
    assert _silent(lambda: Saved.load_from_checkpoint(path)).layer.out_features == 16


def test_init_taking_kwargs_receives_everything_silently(tmp_path):
    class TakesAnything(L.LightningModule):
        def __init__(self, width=8, **kwargs):
            super().__init__()
            self.layer = torch.nn.Linear(4, kwargs.get("hidden", width))

    path = _save(Saved(hidden=16), tmp_path / "a.ckpt")
    assert _silent(lambda: TakesAnything.load_from_checkpoint(path)).layer.out_features == 16


def test_hyperparameters_a_parent_init_saved_are_not_warned_about(tmp_path):
    class Base(L.LightningModule):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, hidden=8):
            super().__init__(lr=0.5)  # the child sets the parent's argument itself
            self.layer = torch.nn.Linear(4, hidden)

    child = Child(hidden=16)
    assert dict(child.hparams) == {"hidden": 16, "lr": 0.5}
    path = _save(child, tmp_path / "a.ckpt")
    assert _silent(lambda: Child.load_from_checkpoint(path)).layer.out_features == 16


def test_values_added_to_hparams_by_hand_are_not_warned_about(tmp_path):
    class Extra(Saved):
        def __init__(self, hidden=8, lr=0.1):
            super().__init__(hidden, lr)
            self.hparams.num_classes = 10  # set by hand, not an __init__ argument

    path = _save_with_trainer(Extra, tmp_path / "a.ckpt", hidden=16)
    assert _silent(lambda: Extra.load_from_checkpoint(path)).layer.out_features == 16


def test_a_checkpoint_without_the_record_warns_about_every_dropped_name(tmp_path):
    """Lightning's checkpoints do not say which hyperparameters were __init__ arguments."""
    path = _save_with_trainer(Saved, tmp_path / "a.ckpt", hidden=8)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint[HPARAMS_INIT_KEY]
    torch.save(checkpoint, path)
    with pytest.warns(UserWarning, match=r"include hidden=8, which `Renamed.__init__` no longer takes"):
        Renamed.load_from_checkpoint(path)


def test_datamodule_renamed_argument_is_warned_about(tmp_path):
    from featherlight.demos.boring_classes import BoringModel

    class DataV1(L.LightningDataModule):
        def __init__(self, batch_size=4):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(8, 32), batch_size=self.hparams.batch_size)

    class DataV2(L.LightningDataModule):
        def __init__(self, bs=2):
            super().__init__()
            self.save_hyperparameters()

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(BoringModel(), datamodule=DataV1(batch_size=4))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.warns(UserWarning, match=r"include batch_size=4, which `DataV2.__init__` no longer takes"):
        DataV2.load_from_checkpoint(tmp_path / "a.ckpt")
    _silent(lambda: DataV1.load_from_checkpoint(tmp_path / "a.ckpt"))
