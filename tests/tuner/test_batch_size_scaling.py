"""Batch-size finder: the search (power/binsearch, OOM, data-size cap, margin), where the attribute lives, and
that the search leaves the trainer, the weights and the RNGs exactly as they were (except the module, datamodule
and dataloaders it attaches, as Lightning does)."""
import copy
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from featherlight import LightningDataModule, Trainer
from featherlight.callbacks.batch_size_finder import BatchSizeFinder
from featherlight.demos.boring_classes import BoringModel, RandomDataset
from featherlight.loggers.csv_logs import CSVLogger
from featherlight.tuner import Tuner
from featherlight.tuner.trials import _is_oom_error
from featherlight.utilities.exceptions import MisconfigurationException

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)"


class BatchSizeModel(BoringModel):
    """``train_dataloader`` reads ``self.batch_size``; ``oom_above`` simulates running out of memory."""

    def __init__(self, batch_size=2, data_len=64, oom_above=None):
        super().__init__()
        self.batch_size = batch_size
        self.oom_above = oom_above
        self.data = RandomDataset(32, data_len)
        self.val_data = RandomDataset(32, data_len)
        self.sizes = []  # size of every training batch seen

    def training_step(self, batch, batch_idx):
        self.sizes.append(len(batch))
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise RuntimeError(OOM_MESSAGE)
        self.log("train_loss", self.step(batch))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise RuntimeError(OOM_MESSAGE)
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_data, batch_size=self.batch_size)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class HparamsModel(BatchSizeModel):
    def __init__(self, batch_size=2, data_len=64, oom_above=None):
        super().__init__(data_len=data_len, oom_above=oom_above)
        del self.batch_size
        self.save_hyperparameters()

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_data, batch_size=self.hparams.batch_size)


class NoAttrModel(BoringModel):
    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 64), batch_size=4)


class DataModule(LightningDataModule):
    def __init__(self, batch_size=2, data_len=64):
        super().__init__()
        self.batch_size = batch_size
        self.data = RandomDataset(32, data_len)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)


class DataModuleModel(BoringModel):
    """No batch size of its own and no train_dataloader: the datamodule provides both."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def training_step(self, batch, batch_idx):
        self.sizes.append(len(batch))
        return super().training_step(batch, batch_idx)


def _trainer(**kwargs):
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu")
    defaults.update(kwargs)
    return Trainer(**defaults)


def _bits(state):
    return {k: v.detach().clone().contiguous().view(torch.uint8) for k, v in state.items()}


def _same_bits(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rng():
    return torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy()


def _same_rng(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def _equal(a, b):
    """Deep equality that compares tensors and arrays by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


# what a tuner call attaches to the trainer, as Lightning's does (checked by the tests that say so)
ATTACHED = {"lightning_module", "datamodule", "train_dataloader", "val_dataloaders", "test_dataloaders",
            "predict_dataloaders", "num_training_batches", "num_val_batches", "num_test_batches",
            "num_predict_batches", "val_check_batch"}


def _trainer_view(trainer):
    """Every attribute of the trainer (identity), the contents of its containers and the run state, except what a
    tuner call attaches."""
    attrs = {k: v for k, v in vars(trainer).items() if k not in ATTACHED}
    return {
        "ids": {k: id(v) for k, v in attrs.items()},
        "lists": {k: list(v) for k, v in attrs.items() if type(v) is list},
        "dicts": {k: dict(v) for k, v in attrs.items() if type(v) is dict},
        "loop": copy.deepcopy(vars(trainer.progress)),
        "state": (trainer.state.fn, trainer.state.status, trainer.state.stage),
        "flags": (trainer.max_steps, trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches,
                  trainer.val_check_interval, trainer.num_sanity_val_steps, trainer.should_stop,
                  trainer.global_step, trainer.current_epoch),
        "callback_metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
        "logged_metrics": dict(trainer.logged_metrics),
        "callbacks": list(trainer.callbacks),
        "loggers": list(trainer.loggers),
        "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
        # the strategy holds the attached module too
        "strategy": {k: v for k, v in vars(trainer.strategy).items() if k not in ("model", "_lightning_module")},
    }


def _assert_same_view(before, after):
    assert after["ids"] == before["ids"]
    assert _equal(after["lists"], before["lists"])
    assert after["dicts"].keys() == before["dicts"].keys()
    assert _equal(after["loop"], before["loop"])
    assert after["state"] == before["state"]
    assert after["flags"] == before["flags"]
    assert after["callback_metrics"].keys() == before["callback_metrics"].keys()
    for k, v in before["callback_metrics"].items():
        assert torch.equal(after["callback_metrics"][k], v)
    assert after["logged_metrics"].keys() == before["logged_metrics"].keys()
    assert after["callbacks"] == before["callbacks"]
    assert after["loggers"] == before["loggers"]
    assert len(after["optimizers"]) == len(before["optimizers"])
    assert _equal(after["optimizers"], before["optimizers"])
    assert after["strategy"] == before["strategy"]


# ----------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("mode", ["power", "binsearch"])
@pytest.mark.parametrize(("data_len", "expected"), [(64, 64), (100, 100), (1000, 1000)])
def test_cpu_search_stops_at_the_dataset_size(mode, data_len, expected):
    model = BatchSizeModel(data_len=data_len)
    result = Tuner(_trainer()).scale_batch_size(model, mode=mode, margin=0.0)
    assert result == expected
    assert model.batch_size == expected
    assert result <= data_len
    assert expected in model.sizes  # a size that was actually run
    assert max(model.sizes) <= data_len


@pytest.mark.parametrize("mode", ["power", "binsearch"])
def test_init_val_larger_than_the_data_is_capped(mode):
    model = BatchSizeModel(data_len=50)
    assert Tuner(_trainer()).scale_batch_size(model, mode=mode, init_val=128, margin=0.0) == 50
    assert set(model.sizes) == {50}


def test_power_oom_gives_the_largest_power_of_two_that_fits():
    model = BatchSizeModel(data_len=1000, oom_above=20)
    assert Tuner(_trainer()).scale_batch_size(model, mode="power") == 16
    assert model.batch_size == 16
    assert sorted(set(model.sizes)) == [2, 4, 8, 16, 32]


def test_binsearch_oom_bisects():
    model = BatchSizeModel(data_len=1000, oom_above=20)
    assert Tuner(_trainer()).scale_batch_size(model, mode="binsearch", margin=0.0) == 20
    assert model.batch_size == 20
    tried = list(dict.fromkeys(model.sizes))
    assert tried == [2, 4, 8, 16, 32, 24, 20, 22, 21]


def test_binsearch_oom_between_powers_of_two_near_the_data_size():
    model = BatchSizeModel(data_len=1000, oom_above=700)
    assert Tuner(_trainer()).scale_batch_size(model, mode="binsearch", margin=0.0) == 700


@pytest.mark.parametrize("mode", ["power", "binsearch"])
def test_oom_at_the_first_trial_goes_down(mode):
    model = BatchSizeModel(data_len=64, oom_above=3)
    expected = 2 if mode == "power" else 3
    assert Tuner(_trainer()).scale_batch_size(model, mode=mode, init_val=16, margin=0.0) == expected
    assert model.batch_size in model.sizes


def test_nothing_fits_raises_and_restores_the_attribute():
    model = BatchSizeModel(batch_size=7, data_len=64, oom_above=0)
    with pytest.raises(RuntimeError, match="batch size 1"):
        Tuner(_trainer()).scale_batch_size(model, mode="power")
    assert model.batch_size == 7


def test_max_trials_limits_the_search():
    model = BatchSizeModel(data_len=1000)
    assert Tuner(_trainer()).scale_batch_size(model, max_trials=3) == 8
    assert model.batch_size == 8


def test_each_trial_runs_steps_per_trial_steps():
    model = BatchSizeModel(data_len=64)
    Tuner(_trainer()).scale_batch_size(model, steps_per_trial=2, max_trials=2)
    assert model.sizes == [2, 2, 4, 4]


def test_iterable_dataset_without_length_stops_at_the_data():
    class Stream(IterableDataset):
        def __iter__(self):
            for _ in range(50):
                yield torch.randn(32)

    class StreamModel(BatchSizeModel):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=self.batch_size)

    model = StreamModel()
    assert Tuner(_trainer()).scale_batch_size(model) == 50
    assert max(model.sizes) == 50


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 20.00 MiB",
    "[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1",
    "MPS backend out of memory (MPS allocated: 1.00 GB)",
])
def test_oom_detection(message):
    assert _is_oom_error(RuntimeError(message))
    assert not _is_oom_error(RuntimeError("shape mismatch"))
    assert not _is_oom_error(ValueError(message))
    assert _is_oom_error(torch.cuda.OutOfMemoryError("boom"))


def test_other_errors_propagate_and_everything_is_restored():
    class Broken(BatchSizeModel):
        def training_step(self, batch, batch_idx):
            if len(batch) > 8:
                raise ValueError("a bug, not memory")
            return super().training_step(batch, batch_idx)

    model = Broken(batch_size=5)
    trainer = _trainer()
    weights = _bits(model.state_dict())
    with pytest.raises(ValueError, match="a bug"):
        Tuner(trainer).scale_batch_size(model)
    assert model.batch_size == 5
    assert _same_bits(weights, _bits(model.state_dict()))
    assert trainer.lightning_module is None and model._trainer is None


# ----------------------------------------------------------------------------------------------- attribute
def test_hparams_attribute_is_updated():
    model = HparamsModel(data_len=64)
    assert Tuner(_trainer()).scale_batch_size(model) == 64
    assert model.hparams.batch_size == 64
    assert not hasattr(model, "batch_size")


def test_datamodule_attribute_is_updated():
    dm = DataModule(data_len=32)
    model = DataModuleModel()
    trainer = _trainer()
    assert Tuner(trainer).scale_batch_size(model, datamodule=dm, mode="binsearch", margin=0.0) == 32
    assert dm.batch_size == 32
    assert 32 in model.sizes
    # left attached, as after Lightning's tuner
    assert trainer.datamodule is dm and dm.trainer is trainer
    assert trainer.train_dataloader.batch_size == 32


def test_datamodule_passed_as_train_dataloaders():
    dm = DataModule(data_len=16)
    assert Tuner(_trainer()).scale_batch_size(DataModuleModel(), dm) == 16
    assert dm.batch_size == 16


def test_custom_batch_arg_name():
    class Custom(BatchSizeModel):
        def __init__(self):
            super().__init__(data_len=32)
            del self.batch_size
            self.bs = 2

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=self.bs)

        def val_dataloader(self):
            return DataLoader(self.val_data, batch_size=self.bs)

    model = Custom()
    assert Tuner(_trainer()).scale_batch_size(model, batch_arg_name="bs") == 32
    assert model.bs == 32


def test_missing_attribute_error_names_it():
    with pytest.raises(MisconfigurationException, match="Field batch_size not found"):
        Tuner(_trainer()).scale_batch_size(NoAttrModel())
    with pytest.raises(MisconfigurationException, match="Field my_bs not found"):
        Tuner(_trainer()).scale_batch_size(BatchSizeModel(), batch_arg_name="my_bs")


def test_loaders_passed_directly_are_refused():
    model = BatchSizeModel()
    with pytest.raises(MisconfigurationException, match=r"train_dataloader\(\)"):
        Tuner(_trainer()).scale_batch_size(model, train_dataloaders=DataLoader(RandomDataset(32, 64)))


def test_a_hook_that_ignores_the_attribute_is_warned_about_once_and_the_search_runs():
    """Lightning runs such a search silently; featherlight warns (once) that its result means nothing."""
    class Fixed(BatchSizeModel):
        def train_dataloader(self):
            return DataLoader(self.data, batch_size=4)

    model = Fixed(batch_size=3)
    with pytest.warns(UserWarning, match=r"batch_size=self.batch_size") as record:
        assert Tuner(_trainer()).scale_batch_size(model, max_trials=3) == 8
    assert sum("measures nothing" in str(w.message) for w in record) == 1
    assert model.batch_size == 8


def test_configuration_errors():
    trainer = _trainer(callbacks=[BatchSizeFinder()])
    with pytest.raises(ValueError, match="Trainer is already configured with a `BatchSizeFinder`"):
        Tuner(trainer).scale_batch_size(BatchSizeModel())
    with pytest.raises(ValueError, match="method"):
        Tuner(_trainer()).scale_batch_size(BatchSizeModel(), method="tune")
    with pytest.raises(MisconfigurationException, match="`dataloaders` argument should be None"):
        Tuner(_trainer()).scale_batch_size(BatchSizeModel(), dataloaders=DataLoader(RandomDataset(32, 4)))
    with pytest.raises(ValueError, match="mode"):
        BatchSizeFinder(mode="linear")
    with pytest.raises(ValueError, match="steps_per_trial"):
        BatchSizeFinder(steps_per_trial=0)
    with pytest.raises(ValueError, match="max_trials"):
        BatchSizeFinder(max_trials=-1)


def test_fast_dev_run_skips_the_search():
    model = BatchSizeModel(batch_size=3)
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(_trainer(fast_dev_run=True)).scale_batch_size(model) is None
    assert model.batch_size == 3


# ----------------------------------------------------------------------------------------------- leaves no trace
def test_weights_trainer_and_rng_are_exactly_as_before(tmp_path):
    torch.manual_seed(7)
    model = BatchSizeModel(batch_size=4, data_len=64, oom_above=20)
    trainer = _trainer(max_steps=5, limit_val_batches=2, logger=CSVLogger(tmp_path), enable_checkpointing=True,
                       default_root_dir=tmp_path)
    trainer.fit(model)  # the trainer has a history: steps, metrics, optimizer state, loaded loaders
    model.batch_size = 4
    weights = _bits(model.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    view = _trainer_view(trainer)
    rng = _rng()

    for mode in ("power", "binsearch"):
        model.batch_size = 4
        assert Tuner(trainer).scale_batch_size(model, mode=mode, margin=0.0) == (16 if mode == "power" else 20)
        assert _same_bits(weights, _bits(model.state_dict()))
        assert _same_rng(rng, _rng())
        _assert_same_view(view, _trainer_view(trainer))
        assert [m.training for m in model.modules()] == modes
        for p, g in zip(model.parameters(), grads):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert model.trainer is trainer


def test_a_fresh_trainer_stays_fresh_but_for_the_attached_module_and_loaders():
    trainer = _trainer()
    model = BatchSizeModel()
    before = _trainer_view(trainer)
    keys = set(vars(trainer))
    found = Tuner(trainer).scale_batch_size(model)
    assert set(vars(trainer)) == keys
    _assert_same_view(before, _trainer_view(trainer))
    # Lightning leaves the module and the fit's loaders (built with the result) attached
    assert trainer.lightning_module is model and model.trainer is trainer
    assert trainer.train_dataloader.batch_size == found == 64
    assert trainer.val_dataloaders.batch_size == found
    assert trainer.num_training_batches == 1 and trainer.num_val_batches == [1]
    assert trainer.datamodule is None


def test_tuner_runs_setup_and_teardown_but_not_the_training_hooks():
    class Recorder(BatchSizeModel):
        def __init__(self):
            super().__init__(data_len=16)
            self.calls = []

        def setup(self, stage):
            self.calls.append("setup")

        def teardown(self, stage):
            self.calls.append("teardown")

        def on_fit_start(self):
            self.calls.append("on_fit_start")

        def on_fit_end(self):
            self.calls.append("on_fit_end")

        def on_exception(self, exception):
            self.calls.append("on_exception")

    model = Recorder()
    Tuner(_trainer()).scale_batch_size(model)
    assert model.calls == ["setup", "teardown"]


# ----------------------------------------------------------------------------------------------- then training
def test_fit_after_scale_batch_size_uses_the_new_size():
    model = BatchSizeModel(data_len=64, oom_above=20)
    trainer = _trainer(max_epochs=2, limit_val_batches=0)
    assert Tuner(trainer).scale_batch_size(model) == 16
    model.sizes.clear()
    trainer.fit(model)
    assert trainer.train_dataloader.batch_size == 16
    assert model.sizes == [16] * 8
    assert trainer.global_step == 8
    assert trainer.current_epoch == 2


def test_callback_searches_then_trains_exactly_like_a_plain_run():
    torch.manual_seed(3)
    model = BatchSizeModel(data_len=64, oom_above=20)
    finder = BatchSizeFinder(mode="binsearch", margin=0.0)
    trainer = _trainer(max_epochs=2, callbacks=[finder])
    assert trainer.callbacks[0] is finder  # tuner callbacks run first
    trainer.fit(model)
    assert finder.optimal_batch_size == 20 and model.batch_size == 20
    assert trainer.train_dataloader.batch_size == 20
    assert trainer.global_step == 2 * 4  # ceil(64 / 20) batches per epoch, trials not counted
    tuned = _bits(model.state_dict())

    torch.manual_seed(3)
    plain = BatchSizeModel(batch_size=20, data_len=64, oom_above=20)
    _trainer(max_epochs=2).fit(plain)
    assert _same_bits(tuned, _bits(plain.state_dict()))


def test_tuner_with_validate():
    model = BatchSizeModel(data_len=48, oom_above=10)
    trainer = _trainer()
    Tuner(trainer).scale_batch_size(model, method="validate", mode="binsearch", margin=0.0)
    assert model.batch_size == 10
    assert model.sizes == []  # no training step ran
    assert trainer.val_dataloaders.batch_size == 10 and trainer.train_dataloader is None


def test_tuner_with_predict():
    class Predictor(BatchSizeModel):
        def predict_step(self, batch, batch_idx):
            if len(batch) > 12:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return self(batch)

        def predict_dataloader(self):
            return DataLoader(self.val_data, batch_size=self.batch_size)

    model = Predictor(data_len=100)
    assert Tuner(_trainer()).scale_batch_size(model, method="predict") == 8
    assert Tuner(_trainer()).scale_batch_size(model, method="predict", mode="binsearch", margin=0.0) == 12


def test_callback_in_validate_searches_and_warns_the_run_keeps_its_loaders():
    model = BatchSizeModel(data_len=48, oom_above=10)
    trainer = _trainer(callbacks=[BatchSizeFinder(mode="binsearch", init_val=4, margin=0.0)])
    with pytest.warns(UserWarning, match="keeps them"):
        trainer.validate(model, verbose=False)
    assert model.batch_size == 10


def test_callback_with_datamodule_and_hparams_in_fit():
    dm = DataModule(data_len=24)
    model = DataModuleModel()
    trainer = _trainer(callbacks=[BatchSizeFinder()])
    trainer.fit(model, datamodule=dm)
    assert dm.batch_size == 24
    assert trainer.train_dataloader.batch_size == 24


# ----------------------------------------------------------------------------------------------- Lightning parity
@pytest.mark.parametrize(("mode", "oom_above", "expected"), [("power", 20, 16), ("binsearch", 20, 19)])
def test_same_result_as_lightning_when_memory_runs_out(mode, oom_above, expected):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.demos.boring_classes import BoringModel as LBoringModel
    from lightning.pytorch.tuner import Tuner as LTuner

    class LModel(LBoringModel):
        def __init__(self):
            super().__init__()
            self.batch_size = 2
            self.data = RandomDataset(32, 1000)
            self.sizes = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.sizes.append(len(batch))
            if len(batch) > oom_above:
                raise RuntimeError(OOM_MESSAGE)
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=self.batch_size)

    lmodel = LModel()
    ltrainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu")
    assert LTuner(ltrainer).scale_batch_size(lmodel, mode=mode) == expected  # both with the default margin

    model = BatchSizeModel(data_len=1000, oom_above=oom_above)
    assert Tuner(_trainer()).scale_batch_size(model, mode=mode) == expected
    ours = [s for i, s in enumerate(model.sizes) if i == 0 or s != model.sizes[i - 1]]
    assert ours == lmodel.sizes


# ----------------------------------------------------------------------------------------------- isolation details
@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed"])
def test_precision_conversion_during_tuning_is_undone(precision):
    model = BatchSizeModel(data_len=32)
    weights = _bits(model.state_dict())
    dtypes = [p.dtype for p in model.parameters()]
    Tuner(_trainer(precision=precision)).scale_batch_size(model)
    assert model.batch_size == 32
    assert [p.dtype for p in model.parameters()] == dtypes
    assert model.dtype == torch.float32
    assert _same_bits(weights, _bits(model.state_dict()))


def test_trials_write_no_logs_and_no_checkpoints(tmp_path):
    model = BatchSizeModel(data_len=32)
    trainer = _trainer(logger=CSVLogger(tmp_path / "logs"), enable_checkpointing=True, default_root_dir=tmp_path)
    Tuner(trainer).scale_batch_size(model)
    assert list(tmp_path.rglob("*.ckpt")) == []
    assert list(tmp_path.rglob("metrics.csv")) == []

    trainer = _trainer(logger=CSVLogger(tmp_path / "logs2"), enable_checkpointing=True, default_root_dir=tmp_path,
                       callbacks=[BatchSizeFinder()], max_epochs=1)
    trainer.fit(BatchSizeModel(data_len=32))
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1  # the real run's checkpoint only
    assert trainer.global_step == 1


def test_with_progress_bar_and_model_summary(capsys):
    model = BatchSizeModel(data_len=32)
    trainer = _trainer(enable_progress_bar=True, enable_model_summary=True, callbacks=[BatchSizeFinder()])
    trainer.fit(model)
    assert model.batch_size == 32
    assert trainer.global_step == 1


# ----------------------------------------------------------------------------------------------- Lightning's contract
def test_binsearch_takes_the_default_margin_off_the_result():
    """Lightning's default ``margin=0.05``: ``int(8 * 0.95) == 7``; the loaders left attached use it."""
    model = BatchSizeModel(batch_size=2, data_len=64)
    trainer = _trainer(limit_train_batches=1, limit_val_batches=0)
    assert Tuner(trainer).scale_batch_size(model, mode="binsearch", init_val=4, max_trials=2) == 7
    assert model.batch_size == 7
    assert sorted(set(model.sizes)) == [4, 8]  # the sizes that ran
    assert trainer.train_dataloader.batch_size == 7
    # power mode keeps the size that ran
    assert Tuner(_trainer()).scale_batch_size(BatchSizeModel(data_len=64), mode="power", max_trials=3) == 8


def test_max_trials_zero_runs_nothing_and_sets_init_val():
    model = BatchSizeModel(batch_size=5, data_len=64)
    with pytest.warns(UserWarning, match="max_trials=0"):
        assert Tuner(_trainer()).scale_batch_size(model, max_trials=0, init_val=3) == 3
    assert model.batch_size == 3
    assert model.sizes == []
    trainer = _trainer(callbacks=[BatchSizeFinder(max_trials=0, init_val=4)], max_steps=1)
    with pytest.warns(UserWarning, match="max_trials=0"):
        trainer.fit(model)
    assert model.batch_size == 4 and trainer.train_dataloader.batch_size == 4


@pytest.mark.parametrize("mode", ["power", "binsearch"])
@pytest.mark.parametrize(("init_val", "tries", "at_data_end"), [(8, 1, 0), (64, 0, 1)])
def test_info_lines_like_lightnings(caplog, mode, init_val, tries, at_data_end):
    """One "trying batch size" line per trial that follows (none after the last one), and Lightning's line when
    the data's length is reached."""
    import logging

    model = BatchSizeModel(batch_size=16, data_len=64)
    with caplog.at_level(logging.INFO, logger="featherlight"):
        Tuner(_trainer()).scale_batch_size(model, mode=mode, init_val=init_val, max_trials=2, steps_per_trial=2)
    assert caplog.text.count("trying batch size") == tries
    assert caplog.text.count("greater or equal than the length of your dataset: 64") == at_data_end


def test_eval_loaders_passed_directly_warn_and_the_search_runs():
    model = BatchSizeModel(batch_size=2, data_len=16)
    loader = DataLoader(RandomDataset(32, 16), batch_size=4)
    with pytest.warns(UserWarning) as record:
        Tuner(_trainer()).scale_batch_size(model, method="validate", dataloaders=loader, max_trials=2)
    messages = [str(w.message) for w in record]
    assert any("cannot resize dataloaders passed directly to `.validate(dataloaders=...)`" in m for m in messages)


def test_multiple_eval_loaders_are_refused_before_the_attribute_is_looked_for():
    class TwoVal(NoAttrModel):
        def val_dataloader(self):
            return [DataLoader(RandomDataset(32, 8)), DataLoader(RandomDataset(32, 8))]

    with pytest.raises(MisconfigurationException, match="The Batch size finder cannot be used with multiple val"):
        Tuner(_trainer()).scale_batch_size(TwoVal(), method="validate")
    with pytest.raises(MisconfigurationException, match="Field batch_size not found"):
        Tuner(_trainer()).scale_batch_size(NoAttrModel(), method="test")


def test_lightning_sentences_start_the_messages():
    with pytest.raises(MisconfigurationException, match="^The Batch size finder cannot be used with dataloaders "
                                                        r"passed directly to `.fit\(\)`"):
        Tuner(_trainer()).scale_batch_size(BatchSizeModel(), train_dataloaders=DataLoader(RandomDataset(32, 8)))
    with pytest.raises(MisconfigurationException, match="^Field batch_size not found in `model`, `datamodule`, nor "
                                                        "their `hparams` attributes."):
        Tuner(_trainer()).scale_batch_size(NoAttrModel())
    with pytest.raises(MisconfigurationException, match="please consider setting `dataloaders` instead"):
        Tuner(_trainer()).scale_batch_size(BatchSizeModel(), train_dataloaders=DataLoader(RandomDataset(32, 8)),
                                           method="test")

    class Both(BatchSizeModel):
        def __init__(self, batch_size=2):
            super().__init__(batch_size=batch_size, data_len=8)
            self.save_hyperparameters()

    with pytest.warns(UserWarning, match="Field `model.batch_size` and `model.hparams.batch_size` are mutually "
                                         "exclusive!"):
        Tuner(_trainer()).scale_batch_size(Both())
