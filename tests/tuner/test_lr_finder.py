"""Learning-rate finder: the schedule, the recorded curve, the suggestion, the attribute update, the
plot, and that the search leaves the weights, the trainer and the RNGs as they were."""
import copy
import random
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from featherlight import Trainer
from featherlight.callbacks.lr_finder import LearningRateFinder
from featherlight.demos.boring_classes import BoringModel, RandomDataset
from featherlight.tuner import Tuner
from featherlight.tuner.lr_finder import _LRFinder
from featherlight.utilities.exceptions import MisconfigurationException


class LRModel(BoringModel):
    """A small regression problem; ``configure_optimizers`` reads ``self.lr``."""

    def __init__(self, lr=0.1, data_len=64 * 4, batch_size=4):
        super().__init__()
        self.lr = lr
        self.batch_size = batch_size
        self.data = RandomDataset(32, data_len)
        self.lrs_used = []

    def training_step(self, batch, batch_idx):
        self.lrs_used.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("loss", self.step(batch))
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class HparamsLRModel(LRModel):
    def __init__(self, learning_rate=0.1):
        super().__init__()
        del self.lr
        self.save_hyperparameters()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


# what a tuner call attaches to the trainer, as Lightning's does
ATTACHED = {"lightning_module", "datamodule", "train_dataloader", "val_dataloaders", "test_dataloaders",
            "predict_dataloaders", "num_training_batches", "num_val_batches", "num_test_batches",
            "num_predict_batches", "val_check_batch"}


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


# ----------------------------------------------------------------------------------------------- the curve
@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_results_follow_the_schedule(mode):
    model = LRModel()
    finder = Tuner(_trainer()).lr_find(model, min_lr=1e-5, max_lr=1.0, num_training=40, mode=mode,
                                       early_stop_threshold=None, update_attr=False)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) == 40
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # strictly increasing
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    if mode == "exponential":
        assert lrs[1] == pytest.approx(1e-5 * (1e5) ** (2 / 40))
    else:
        assert lrs[1] == pytest.approx(1e-5 + 2 / 40 * (1.0 - 1e-5))
    assert model.lrs_used == lrs  # the optimizer really used them, one per step
    assert all(np.isfinite(losses))


def test_one_point_per_optimizer_step_with_accumulation():
    model = LRModel()
    finder = Tuner(_trainer(accumulate_grad_batches=3)).lr_find(model, num_training=20, early_stop_threshold=None)
    lrs = finder.results["lr"]
    assert len(lrs) == len(finder.results["loss"]) == 20
    assert len(set(lrs)) == 20
    assert model.lrs_used == [lr for lr in lrs for _ in range(3)]


def test_suggestion_on_a_simple_problem_and_attribute_update():
    torch.manual_seed(0)
    model = LRModel(lr=0.123)
    finder = Tuner(_trainer()).lr_find(model, num_training=60)
    suggestion = finder.suggestion()
    assert suggestion is not None
    assert finder.results["lr"][0] < suggestion < finder.results["lr"][-1]
    assert model.lr == suggestion
    # the suggestion is where the smoothed loss falls fastest
    idx = finder._optimal_idx
    assert 10 <= idx < len(finder.results["loss"]) - 1


def test_hparams_attribute_is_updated():
    model = HparamsLRModel()
    finder = Tuner(_trainer()).lr_find(model, num_training=30)
    assert model.hparams.learning_rate == finder.suggestion()


def test_attr_name():
    class Custom(LRModel):
        def __init__(self):
            super().__init__()
            del self.lr
            self.my_lr = 0.5

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.my_lr)

    model = Custom()
    finder = Tuner(_trainer()).lr_find(model, num_training=30, attr_name="my_lr")
    assert model.my_lr == finder.suggestion()
    with pytest.raises(AttributeError, match="nope"):
        Tuner(_trainer()).lr_find(model, attr_name="nope")


def test_missing_attribute():
    class NoLR(LRModel):
        def __init__(self):
            super().__init__()
            del self.lr

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match="attr_name"):
        Tuner(_trainer()).lr_find(NoLR())
    assert Tuner(_trainer()).lr_find(NoLR(), num_training=20, update_attr=False) is not None


def test_early_stop_when_the_loss_diverges():
    model = LRModel()
    finder = Tuner(_trainer()).lr_find(model, min_lr=1e-3, max_lr=1e4, num_training=100)
    assert 2 < len(finder.results["loss"]) < 100
    assert len(finder.results["lr"]) == len(finder.results["loss"])


def test_suggestion_with_too_few_points_warns_and_returns_none():
    model = LRModel(lr=0.3)
    with pytest.warns(UserWarning, match="not enough points"):
        finder = Tuner(_trainer()).lr_find(model, num_training=5)
    with pytest.warns(UserWarning, match="not enough points"):
        assert finder.suggestion(skip_begin=10) is None
    assert model.lr == 0.3  # nothing to update with
    assert finder.suggestion(skip_begin=0, skip_end=0) is not None


def test_suggestion_ignores_non_finite_losses():
    finder = _LRFinder("linear", 0.1, 0.7, 7)
    finder.results = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                      "loss": [1.0, 0.98, float("nan"), 0.9, 0.3, 0.29, 5.0]}
    # gradients over the finite points (lr 0.1, 0.2, 0.4, 0.5, 0.6): the steepest fall is at lr 0.4
    assert finder.suggestion(skip_begin=0, skip_end=1) == 0.4
    assert finder._optimal_idx == 3


def test_configuration_errors():
    with pytest.raises(MisconfigurationException, match="method='fit'"):
        Tuner(_trainer()).lr_find(LRModel(), method="validate")
    with pytest.raises(ValueError, match="Trainer is already configured with a `LearningRateFinder`"):
        Tuner(_trainer(callbacks=[LearningRateFinder()])).lr_find(LRModel())
    with pytest.raises(ValueError, match="mode"):
        LearningRateFinder(mode="cosine")

    class TwoOptimizers(LRModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=self.lr), torch.optim.SGD(self.parameters(), lr=self.lr)]

    with pytest.raises(MisconfigurationException, match=r"^`model.configure_optimizers\(\)` returned 2, but learning "
                                                        "rate finder only works with single optimizer"):
        Tuner(_trainer()).lr_find(TwoOptimizers())
    with pytest.raises(AttributeError, match="^When using the learning rate finder, either `model` or `model.hparams` "
                                             "should have one of these fields"):
        Tuner(_trainer()).lr_find(BoringModel(), update_attr=True)
    with pytest.raises(ValueError, match="num_training_steps"):
        LearningRateFinder(num_training_steps=-1)


def test_zero_steps_warn_and_suggest_nothing_as_in_lightning():
    model = LRModel(lr=0.3)
    with pytest.warns(UserWarning, match="num_training=0"):
        finder = Tuner(_trainer()).lr_find(model, num_training=0)
    assert finder.results == {}
    assert model.lr == 0.3 and model.lrs_used == []


def test_fast_dev_run_skips_the_search():
    model = LRModel(lr=0.3)
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(_trainer(fast_dev_run=True)).lr_find(model) is None
    assert model.lr == 0.3


# ----------------------------------------------------------------------------------------------- leaves no trace
def test_weights_trainer_and_rng_are_restored(tmp_path):
    torch.manual_seed(1)
    model = LRModel()
    trainer = _trainer(max_steps=6, default_root_dir=tmp_path)
    trainer.fit(model)
    weights = _bits(model.state_dict())
    optimizer_state = copy.deepcopy(trainer.optimizers[0].state_dict())
    scheduler_state = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())
    ids = {k: id(v) for k, v in vars(trainer).items() if k not in ATTACHED}
    flags = (trainer.max_steps, trainer.max_epochs, trainer.global_step, trainer.current_epoch, trainer.should_stop,
             trainer.limit_val_batches, list(trainer.callbacks), list(trainer.loggers), trainer.state.status)
    metrics = {k: v.clone() for k, v in trainer.callback_metrics.items()}
    rng = _rng()

    Tuner(trainer).lr_find(model, num_training=30, update_attr=False)

    assert _same_bits(weights, _bits(model.state_dict()))
    assert _same_rng(rng, _rng())
    assert {k: id(v) for k, v in vars(trainer).items() if k not in ATTACHED} == ids
    assert (trainer.max_steps, trainer.max_epochs, trainer.global_step, trainer.current_epoch, trainer.should_stop,
            trainer.limit_val_batches, list(trainer.callbacks), list(trainer.loggers), trainer.state.status) == flags
    assert trainer.callback_metrics.keys() == metrics.keys()
    assert all(torch.equal(trainer.callback_metrics[k], v) for k, v in metrics.items())
    after = trainer.optimizers[0].state_dict()
    assert after["param_groups"] == optimizer_state["param_groups"]
    for idx, state in optimizer_state["state"].items():
        assert all(torch.equal(after["state"][idx][k], v) for k, v in state.items())
    assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == scheduler_state


def test_fresh_model_and_trainer_stay_fresh_but_for_the_attached_module_and_loader():
    model = LRModel()
    trainer = _trainer()
    keys = set(vars(trainer))
    weights = _bits(model.state_dict())
    Tuner(trainer).lr_find(model, num_training=20)
    assert set(vars(trainer)) == keys
    # as after Lightning's lr_find: the module and the training loader stay attached
    assert trainer.lightning_module is model and model.trainer is trainer
    assert trainer.train_dataloader.batch_size == 4 and trainer.num_training_batches == 64
    assert trainer.global_step == 0 and trainer.optimizers == []
    assert _same_bits(weights, _bits(model.state_dict()))


def test_fit_after_lr_find_uses_the_suggestion():
    model = LRModel(data_len=64)
    trainer = _trainer(max_steps=3)
    finder = Tuner(trainer).lr_find(model, num_training=40, min_lr=1e-4)
    model.lrs_used.clear()
    trainer.fit(model)
    assert model.lrs_used[0] == finder.suggestion()
    assert trainer.global_step == 3


def test_callback_searches_then_trains_like_a_plain_run_with_the_suggestion():
    torch.manual_seed(5)
    model = LRModel()
    finder = LearningRateFinder(num_training_steps=40)
    trainer = _trainer(max_steps=10, callbacks=[finder])
    assert trainer.callbacks[0] is finder
    trainer.fit(model)
    suggestion = finder.optimal_lr.suggestion()
    assert model.lr == suggestion
    assert trainer.global_step == 10
    tuned = _bits(model.state_dict())

    torch.manual_seed(5)
    plain = LRModel(lr=suggestion)
    _trainer(max_steps=10).fit(plain)
    assert _same_bits(tuned, _bits(plain.state_dict()))
    assert plain.lrs_used == model.lrs_used[-10:]


# ----------------------------------------------------------------------------------------------- plot
def test_plot_with_matplotlib():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    finder = Tuner(_trainer()).lr_find(LRModel(), num_training=30)
    fig = finder.plot(suggest=True)
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    import matplotlib.pyplot as plt

    fig2, ax2 = plt.subplots()
    assert finder.plot(ax=ax2) is fig2


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    finder = _LRFinder("exponential", 1e-4, 1.0, 3)
    finder.results = {"lr": [1e-4, 1e-2, 1.0], "loss": [1.0, 0.5, 0.7]}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MisconfigurationException, match="pip install matplotlib"):
        finder.plot()


def test_plot_draws_the_curve_and_the_suggestion(monkeypatch):
    """With a stand-in for matplotlib: what ``plot`` draws, whether or not matplotlib is installed."""
    calls = []

    class Axes:
        def __init__(self):
            self.figure = "figure"

        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append((name, args, kwargs))

    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda: ("figure", Axes())
    pyplot.show = lambda: calls.append(("show", (), {}))
    package = types.ModuleType("matplotlib")
    package.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", package)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)

    finder = _LRFinder("exponential", 1e-4, 1.0, 20)
    lrs = [1e-4 * 10 ** (4 * i / 19) for i in range(20)]
    finder.results = {"lr": lrs, "loss": [1.0 - 0.04 * i for i in range(15)] + [0.3, 0.2, 0.3, 2.0, 5.0]}
    assert finder.plot(suggest=True, show=True) == "figure"
    assert finder._optimal_idx is not None
    names = [c[0] for c in calls]
    assert names == ["plot", "set_xscale", "set_xlabel", "set_ylabel", "plot", "show"]
    assert calls[0][1] == (finder.results["lr"], finder.results["loss"])
    assert calls[1][1] == ("log",)
    assert calls[4][1] == (finder.results["lr"][finder._optimal_idx], finder.results["loss"][finder._optimal_idx])


# ----------------------------------------------------------------------------------------------- Lightning parity
@pytest.mark.parametrize(("mode", "threshold"), [("exponential", 4.0), ("linear", None)])
def test_same_curve_and_suggestion_as_lightning(mode, threshold):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.demos.boring_classes import BoringModel as LBoringModel
    from lightning.pytorch.tuner import Tuner as LTuner

    class LModel(LBoringModel):
        def __init__(self):
            super().__init__()
            self.lr = 0.1
            self.data = RandomDataset(32, 16 * 200)

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=16)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    class FModel(LRModel):
        def __init__(self):
            super().__init__(data_len=16 * 200, batch_size=16)

        def training_step(self, batch, batch_idx):
            return BoringModel.training_step(self, batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    torch.manual_seed(42)
    lmodel = LModel()
    ltrainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu")
    expected = LTuner(ltrainer).lr_find(lmodel, num_training=80, mode=mode, early_stop_threshold=threshold)

    torch.manual_seed(42)
    model = FModel()
    ours = Tuner(_trainer()).lr_find(model, num_training=80, mode=mode, early_stop_threshold=threshold)
    assert ours.results["lr"] == pytest.approx(expected.results["lr"], rel=1e-12)
    assert ours.results["loss"] == pytest.approx(expected.results["loss"], rel=1e-6)
    assert ours.suggestion() == pytest.approx(expected.suggestion(), rel=1e-12)
    assert model.lr == pytest.approx(lmodel.lr, rel=1e-12)
