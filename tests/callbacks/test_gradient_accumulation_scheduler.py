import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import GradientAccumulationScheduler
from featherlight.utilities.exceptions import MisconfigurationException

SCHEDULE = {1: 2, 3: 3}
EPOCHS = 4
N, BATCH = 14, 2  # 7 batches: windows of 2 and 3 leave a shorter last window


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)


def _loader():
    return DataLoader(TensorDataset(*_data()), batch_size=BATCH)


def make_module(base):
    class Net(base):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
            self.steps_at_epoch_end = []
            self.factors = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def on_train_epoch_start(self):
            self.factors.append(self.trainer.accumulate_grad_batches)

        def on_train_epoch_end(self):
            self.steps_at_epoch_end.append(self.trainer.global_step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Net


def _fit(trainer_cls, module_cls, callbacks, **kwargs):
    model = module_cls()
    trainer = trainer_cls(max_epochs=EPOCHS, callbacks=callbacks, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader())
    return model, trainer


def _raw_loop():
    """What accumulation means, in plain torch: loss / k per batch, a step every k batches and on the last."""
    model = make_module(torch.nn.Module)()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = GradientAccumulationScheduler(SCHEDULE)
    x, y = _data()
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]
    steps, total = [], 0
    for epoch in range(EPOCHS):
        k = sched.get_accumulate_grad_batches(epoch)
        for i, (bx, by) in enumerate(batches):
            loss = torch.nn.functional.mse_loss(model.net(bx), by)
            if i % k == 0:
                opt.zero_grad()
            (loss / k if k > 1 else loss).backward()
            if (i + 1) % k == 0 or i == len(batches) - 1:
                opt.step()
                total += 1
        steps.append(total)
    return model, steps


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("scheduling, error", [
    ({}, TypeError),
    ({-1: 2}, MisconfigurationException),
    ({"1": 2}, MisconfigurationException),
    ({1.0: 2}, MisconfigurationException),
    ({1: 0}, MisconfigurationException),
    ({1: 1.5}, MisconfigurationException),
    ({1: -2}, MisconfigurationException),
])
def test_invalid_scheduling(scheduling, error):
    with pytest.raises(error):
        GradientAccumulationScheduler(scheduling)


def test_invalid_scheduling_messages_start_with_lightnings():
    with pytest.raises(MisconfigurationException, match=r"^Epoch should be an int greater than or equal to 0. Got "
                                                        r"\[1, -3\]"):
        GradientAccumulationScheduler({1: 2, -3: 4})
    with pytest.raises(MisconfigurationException, match=r"^Accumulation factor should be an int greater than 0. Got "
                                                        r"\[0, 4\]"):
        GradientAccumulationScheduler({1: 0, 3: 4})


def test_factor_per_epoch_and_caller_dict_untouched():
    given = {4: 2, 8: 4}
    cb = GradientAccumulationScheduler(given)
    assert given == {4: 2, 8: 4}
    assert cb.scheduling == {0: 1, 4: 2, 8: 4}
    assert [cb.get_accumulate_grad_batches(e) for e in range(10)] == [1, 1, 1, 1, 2, 2, 2, 2, 4, 4]
    assert cb.going_to_accumulate_grad_batches()
    assert not GradientAccumulationScheduler({0: 1, 3: 1}).going_to_accumulate_grad_batches()
    assert GradientAccumulationScheduler({0: 3}).get_accumulate_grad_batches(0) == 3


# ---------------------------------------------------------------------------------------------- behaviour
def test_matches_raw_loop_bitwise():
    model, trainer = _fit(L.Trainer, make_module(L.LightningModule), [GradientAccumulationScheduler(SCHEDULE)])
    raw, raw_steps = _raw_loop()
    assert model.factors == [1, 2, 2, 3]
    assert model.steps_at_epoch_end == raw_steps == [7, 11, 15, 18]
    for (name, a), b in zip(model.state_dict().items(), raw.state_dict().values()):
        assert torch.equal(a, b), name


def test_matches_lightning():
    pl = pytest.importorskip("lightning.pytorch")
    ours, _ = _fit(L.Trainer, make_module(L.LightningModule), [GradientAccumulationScheduler(SCHEDULE)])
    theirs, _ = _fit(pl.Trainer, make_module(pl.LightningModule),
                     [pl.callbacks.GradientAccumulationScheduler(dict(SCHEDULE))])
    assert ours.steps_at_epoch_end == theirs.steps_at_epoch_end
    assert ours.factors == theirs.factors
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_refuses_trainer_accumulation():
    with pytest.raises(ValueError, match="^You have set `accumulate_grad_batches` and are using the "
                                         "`GradientAccumulationScheduler` callback. Either remove"):
        _fit(L.Trainer, make_module(L.LightningModule), [GradientAccumulationScheduler(SCHEDULE)],
             accumulate_grad_batches=2)


def test_refuses_manual_optimization():
    class Manual(make_module(L.LightningModule)):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    with pytest.raises(RuntimeError, match="^Automatic gradient accumulation and the `GradientAccumulationScheduler` "
                                           "is not supported for manual optimization"):
        _fit(L.Trainer, Manual, [GradientAccumulationScheduler(SCHEDULE)])


def test_warns_when_optimizer_step_is_overridden():
    class Custom(make_module(L.LightningModule)):
        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)

    model = Custom()
    trainer = L.Trainer(max_epochs=1, callbacks=[GradientAccumulationScheduler({0: 2})], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="the hooks will not be called on every batch"):
        trainer.fit(model, _loader())
    assert trainer.global_step == 4


def test_second_fit_on_the_same_trainer():
    """The factor the callback left on the trainer is not mistaken for a user's `accumulate_grad_batches`."""
    model, trainer = _fit(L.Trainer, make_module(L.LightningModule), [GradientAccumulationScheduler(SCHEDULE)])
    assert trainer.accumulate_grad_batches == 3
    trainer.max_epochs = EPOCHS + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader())
    assert model.steps_at_epoch_end[-1] == 18 + 3


# ---------------------------------------------------------------------------------------------- exact resume
def _harness():
    path = Path(__file__).resolve().parents[1] / "trainer" / "test_exact_resume.py"
    spec = importlib.util.spec_from_file_location("_exact_resume_harness_gas", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kill", [("on_train_batch_end", 1, 2), ("on_train_batch_end", 2, 4),
                                  ("on_train_epoch_end", 1, None), ("on_validation_end", 2, None)])
def test_resume_is_bit_exact(kill, tmp_path):
    H = _harness()

    def run(kill_at=None):
        torch.manual_seed(1)
        logger, model = H.Recorder(), H.Model()
        if kill_at is None:
            H._trainer(logger, [GradientAccumulationScheduler({1: 2, 2: 3})]).fit(model)
            return model, logger.rows
        path = tmp_path / "killed.ckpt"
        with pytest.raises(H.Killed):
            H._trainer(logger, [GradientAccumulationScheduler({1: 2, 2: 3}), H.KillAt(*kill_at, path)]).fit(model)
        before = list(logger.rows)
        torch.manual_seed(12345)
        logger2, resumed = H.Recorder(), H.Model()
        H._trainer(logger2, [GradientAccumulationScheduler({1: 2, 2: 3})]).fit(resumed, ckpt_path=path)
        return resumed, before + logger2.rows

    H._assert_same(run(), run(kill))
