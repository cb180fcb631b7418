import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import StochasticWeightAveraging
from featherlight.utilities.exceptions import MisconfigurationException


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 4, generator=g), torch.randn(40, 1, generator=g)


def make_module(base, bn=True):
    class Net(base):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            norm = torch.nn.BatchNorm1d(8) if bn else torch.nn.Identity()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), norm, torch.nn.ReLU(), torch.nn.Linear(8, 1))
            self.lrs = []
            self.train_epochs = []
            self.batches = []

        def training_step(self, batch, batch_idx):
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            self.train_epochs.append(self.current_epoch)
            self.batches.append(batch[0])
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def train_dataloader(self):
            return DataLoader(TensorDataset(*_data()), batch_size=10, shuffle=True)

        def val_dataloader(self):
            return DataLoader(TensorDataset(*_data()), batch_size=10)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]

    return Net


def _fit(trainer_cls, module, callbacks, max_epochs=6, ckpt_path=None, **kwargs):
    torch.manual_seed(0)
    trainer = trainer_cls(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


SWA_KW = dict(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=3)


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs", [
    dict(swa_lrs=0.1, swa_epoch_start=0),
    dict(swa_lrs=0.1, swa_epoch_start=1.5),
    dict(swa_lrs=0.1, swa_epoch_start=-0.1),
    dict(swa_lrs=0),
    dict(swa_lrs=-0.1),
    dict(swa_lrs=[0.1, -0.1]),
    dict(swa_lrs="0.1"),
    dict(swa_lrs=0.1, avg_fn=3),
    dict(swa_lrs=0.1, device=3),
    dict(swa_lrs=0.1, annealing_strategy="exp"),
    dict(swa_lrs=0.1, annealing_epochs=-1),
])
def test_invalid_arguments(kwargs):
    with pytest.raises(MisconfigurationException):
        StochasticWeightAveraging(**kwargs)


def test_messages_start_with_lightnings():
    with pytest.raises(MisconfigurationException, match="^swa_epoch_start should be a >0 integer or a float between "
                                                        "0 and 1"):
        StochasticWeightAveraging(swa_epoch_start=0, swa_lrs=0.1)
    with pytest.raises(MisconfigurationException, match="^The `swa_lrs` should be a positive float, or a list of "
                                                        "positive floats"):
        StochasticWeightAveraging(swa_epoch_start=5, swa_lrs=[0.2, 1])


def test_step_interval_scheduler_warns_like_lightning():
    class StepScheduler(make_module(L.LightningModule, bn=False)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                       "interval": "step"}}

    trainer = L.Trainer(max_epochs=2, callbacks=[StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="^SWA is currently only supported every epoch. Found interval='step'"):
        trainer.fit(StepScheduler())


def test_start_and_end_epochs():
    cb = StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0.5)
    model = make_module(L.LightningModule, bn=False)()
    _fit(L.Trainer, model, [cb], max_epochs=4)
    assert (cb.swa_start, cb.swa_end) == (1, 3)  # int(0.5 * 4) = 2nd epoch, index 1
    assert cb._swa_epoch_start == 0.5  # the argument is not overwritten: a later fit resolves it again
    assert StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=3).swa_start == 2


# ---------------------------------------------------------------------------------------------- against Lightning
@pytest.mark.parametrize("bn", [False, True], ids=["no_bn", "bn"])
@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_matches_lightning(bn, strategy):
    pl = pytest.importorskip("lightning.pytorch")
    ours, theirs = make_module(L.LightningModule, bn)(), make_module(pl.LightningModule, bn)()
    t1 = _fit(L.Trainer, ours, [StochasticWeightAveraging(annealing_strategy=strategy, **SWA_KW)])
    t2 = _fit(pl.Trainer, theirs, [pl.callbacks.StochasticWeightAveraging(annealing_strategy=strategy, **SWA_KW)])
    assert ours.lrs == pytest.approx(theirs.lrs)
    assert ours.train_epochs == theirs.train_epochs  # with batch norm: one more, forward-only epoch
    assert t1.current_epoch == t2.current_epoch and t1.max_epochs == t2.max_epochs == 6
    assert t1.global_step == t2.global_step
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # validation in the batch-norm epoch sees the averaged model with its new statistics
    torch.testing.assert_close(t1.callback_metrics["val_loss"], t2.callback_metrics["val_loss"])


def test_custom_avg_fn_matches_lightning():
    pl = pytest.importorskip("lightning.pytorch")

    def ema(avg, new, n):
        return 0.5 * avg + 0.5 * new

    ours, theirs = make_module(L.LightningModule, False)(), make_module(pl.LightningModule, False)()
    _fit(L.Trainer, ours, [StochasticWeightAveraging(avg_fn=ema, **SWA_KW)])
    _fit(pl.Trainer, theirs, [pl.callbacks.StochasticWeightAveraging(avg_fn=ema, **SWA_KW)])
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------- behaviour
def test_weights_are_the_average_of_the_swa_epochs():
    """The module ends with the mean of the weights at the start of each SWA epoch (Lightning's schedule)."""
    snapshots = []

    class Snap(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            snapshots.append([p.detach().clone() for p in pl_module.parameters()])

    model = make_module(L.LightningModule, bn=False)()
    # Snap runs before SWA in on_train_epoch_start (list order), seeing the weights SWA folds in
    _fit(L.Trainer, model, [Snap(), StochasticWeightAveraging(**SWA_KW)], max_epochs=5)
    swa_epochs = snapshots[1:5]  # epochs 1..4 (swa_start=1, swa_end=4)
    for i, p in enumerate(model.parameters()):
        expected = torch.stack([s[i] for s in swa_epochs]).mean(0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_epoch_recomputes_statistics_and_restores_state():
    model = make_module(L.LightningModule, bn=True)()
    bn = model.net[1]
    steps = []

    class Steps(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            steps.append(trainer.global_step)

    cb = StochasticWeightAveraging(**SWA_KW)
    trainer = _fit(L.Trainer, model, [cb, Steps()], max_epochs=3)
    assert trainer.max_epochs == 3 and trainer.current_epoch == 4
    assert steps == [4, 8, 12, 13]  # no optimizer step in the batch-norm epoch, one counted at its end
    assert model.automatic_optimization and bn.momentum == 0.1 and cb.momenta == {}
    # the running statistics are the cumulative average over the training data, for the averaged weights
    x = torch.stack([b for b, e in zip(model.batches, model.train_epochs) if e == 3])
    with torch.no_grad():
        h = model.net[0](x)  # the batch-norm epoch's 4 batches of 10, through the averaged first layer
    torch.testing.assert_close(bn.running_mean, h.mean(1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, h.var(1, unbiased=True).mean(0), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 4


def test_state_restored_after_an_exception_in_the_batch_norm_epoch():
    class Boom(make_module(L.LightningModule, bn=True)):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    model = Boom()
    trainer = L.Trainer(max_epochs=3, callbacks=[StochasticWeightAveraging(**SWA_KW)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    assert trainer.max_epochs == 3 and model.automatic_optimization and model.net[1].momentum == 0.1


def test_average_lives_on_the_requested_device():
    cb = StochasticWeightAveraging(device=None, **SWA_KW)
    _fit(L.Trainer, make_module(L.LightningModule, bn=False)(), [cb], max_epochs=3)
    assert cb._average_model is not None
    assert int(cb.n_averaged) == 2 and cb.n_averaged.device == torch.device("cpu")


def test_one_optimizer_and_scheduler_only():
    class TwoSchedulers(make_module(L.LightningModule, bn=False)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1), torch.optim.lr_scheduler.StepLR(opt, 2)]

    with pytest.raises(MisconfigurationException, match="^SWA currently not supported for more than 1 `lr_scheduler`"):
        _fit(L.Trainer, TwoSchedulers(), [StochasticWeightAveraging(**SWA_KW)])

    class TwoOptimizers(make_module(L.LightningModule, bn=False)):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                    torch.optim.SGD(self.net[3].parameters(), lr=0.1)]

    with pytest.raises(MisconfigurationException, match="^SWA currently works with 1 `optimizer`"):
        _fit(L.Trainer, TwoOptimizers(), [StochasticWeightAveraging(**SWA_KW)])


def test_fractional_start_needs_max_epochs():
    with pytest.raises(MisconfigurationException, match="max_epochs"):
        _fit(L.Trainer, make_module(L.LightningModule, bn=False)(), [StochasticWeightAveraging(swa_lrs=0.1)],
             max_epochs=-1, max_steps=10)


def test_infinite_training_transfers_at_the_end():
    model = make_module(L.LightningModule, bn=False)()
    cb = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2)
    _fit(L.Trainer, model, [cb], max_epochs=-1, max_steps=14)  # epochs 0-2, 2 batches into epoch 3
    assert int(cb.n_averaged) == 3  # epochs 1, 2, 3
    for a, b in zip(cb._average_model.module.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_layers_built_in_configure_model(tmp_path):
    """The averaged copy is made after `configure_model` has built the layers."""
    class Lazy(make_module(L.LightningModule, bn=True)):
        def __init__(self):
            super().__init__()
            self.net = None

        def configure_model(self):
            if self.net is None:
                with torch.random.fork_rng():  # the same weights as Net's, without moving the data order's RNG
                    torch.manual_seed(0)
                    self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                                   torch.nn.Linear(8, 1))

    eager, lazy = make_module(L.LightningModule, bn=True)(), Lazy()
    _fit(L.Trainer, eager, [StochasticWeightAveraging(**SWA_KW)], max_epochs=4)
    trainer = _fit(L.Trainer, lazy, [StochasticWeightAveraging(**SWA_KW)], max_epochs=4)
    for (name, a), b in zip(eager.state_dict().items(), lazy.state_dict().values()):
        assert torch.equal(a, b), name
    # and a resume restores its state into the copy made then
    trainer.save_checkpoint(tmp_path / "lazy.ckpt")
    cb = StochasticWeightAveraging(**SWA_KW)
    resumed = Lazy()
    _fit(L.Trainer, resumed, [cb], max_epochs=4, ckpt_path=tmp_path / "lazy.ckpt")
    saved = torch.load(tmp_path / "lazy.ckpt", weights_only=True)["callbacks"]["StochasticWeightAveraging"]
    for name, value in cb._average_model.module.state_dict().items():
        assert torch.equal(saved["average_model_state"][name], value), name


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_holds_the_swa_state(tmp_path):
    model = make_module(L.LightningModule, bn=False)()
    cb = StochasticWeightAveraging(**SWA_KW)
    trainer = _fit(L.Trainer, model, [cb], max_epochs=4)
    trainer.save_checkpoint(tmp_path / "swa.ckpt")
    state = torch.load(tmp_path / "swa.ckpt", weights_only=True)["callbacks"]["StochasticWeightAveraging"]
    assert state["n_averaged"] == 3 and state["latest_update_epoch"] == 3
    assert state["scheduler_state"]["_step_count"] == 4
    for name, value in cb._average_model.module.state_dict().items():
        assert torch.equal(state["average_model_state"][name], value)

    other = StochasticWeightAveraging(**SWA_KW)
    other.setup(trainer, make_module(L.LightningModule, bn=False)(), "fit")
    other.load_state_dict(state)
    assert other._init_n_averaged == 3 and other._latest_update_epoch == 3
    for name, value in other._average_model.module.state_dict().items():
        assert torch.equal(state["average_model_state"][name], value)


def _harness():
    path = Path(__file__).resolve().parents[1] / "trainer" / "test_exact_resume.py"
    spec = importlib.util.spec_from_file_location("_exact_resume_harness_swa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resume_run(H, model_cls, make_cb, kill, tmp_path):
    torch.manual_seed(1)
    logger, model = H.Recorder(), model_cls()
    if kill is None:
        H._trainer(logger, [make_cb()], max_epochs=4).fit(model)
        return model, logger.rows
    path = tmp_path / "killed.ckpt"
    with pytest.raises(H.Killed):
        H._trainer(logger, [make_cb(), H.KillAt(*kill, path)], max_epochs=4).fit(model)
    before = list(logger.rows)
    torch.manual_seed(12345)
    logger2, resumed = H.Recorder(), model_cls()
    H._trainer(logger2, [make_cb()], max_epochs=4).fit(resumed, ckpt_path=path)
    return resumed, before + logger2.rows


@pytest.mark.parametrize("bn", [False, True], ids=["no_bn", "bn"])
@pytest.mark.parametrize("point", ["mid_epoch", "epoch_end", "epoch_start", "during_validation", "validation_end"])
def test_resume_is_bit_exact(point, bn, tmp_path):
    """SWA from the second epoch of four: killed before or inside the SWA epochs, a resumed run ends with
    the same averaged weights (and batch-norm statistics), learning rates and logs as an uninterrupted one."""
    H = _harness()

    class Model(H.Model):
        def __init__(self, workers=0):
            super().__init__(workers)
            if bn:
                self.net.insert(1, torch.nn.BatchNorm1d(16))

    def make_cb():
        return StochasticWeightAveraging(swa_lrs=0.002, swa_epoch_start=2, annealing_epochs=3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H._assert_same(_resume_run(H, Model, make_cb, None, tmp_path),
                       _resume_run(H, Model, make_cb, H.KILL_POINTS[point], tmp_path))


@pytest.mark.parametrize("kill", [("on_train_batch_end", 4, 5), ("on_train_batch_end", 4, 10),
                                  ("on_validation_batch_end", 4, 1), ("on_validation_end", 4, None),
                                  ("on_train_epoch_start", 4, None)])
def test_resume_inside_the_batch_norm_epoch_is_bit_exact(kill, tmp_path):
    """Killed while the batch-norm statistics are being recomputed, a resumed run accumulates the rest."""
    H = _harness()

    class Model(H.Model):
        def __init__(self, workers=0):
            super().__init__(workers)
            self.net.insert(1, torch.nn.BatchNorm1d(16))

    def make_cb():
        return StochasticWeightAveraging(swa_lrs=0.002, swa_epoch_start=2, annealing_epochs=3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H._assert_same(_resume_run(H, Model, make_cb, None, tmp_path),
                       _resume_run(H, Model, make_cb, kill, tmp_path))


def test_model_checkpoint_saves_the_final_model(tmp_path):
    """As in Lightning, the batch-norm epoch's end counts as a step: the last checkpoint is the final model."""
    model = make_module(L.LightningModule, bn=True)()
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = L.Trainer(max_epochs=3, callbacks=[StochasticWeightAveraging(**SWA_KW), ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 13
    for name, value in model.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value), name
