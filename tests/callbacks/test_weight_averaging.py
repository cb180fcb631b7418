import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import EMAWeightAveraging, WeightAveraging


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def make_module(base):
    class Net(base):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                           torch.nn.Linear(8, 1))
            self.val_losses = []
            self.val_weights = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.val_losses.append(loss.item())
            if batch_idx == 0:
                self.val_weights.append(self.net[0].weight.detach().clone())
            self.log("val_loss", loss)

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def train_dataloader(self):
            return DataLoader(TensorDataset(*_data()), batch_size=10, shuffle=True)

        def val_dataloader(self):
            return DataLoader(TensorDataset(*_data(20)), batch_size=10)

        def test_dataloader(self):
            return self.val_dataloader()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return Net


def _trainer(trainer_cls, callbacks, max_epochs=3, **kwargs):
    return trainer_cls(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _fit(trainer_cls, model, callbacks, **kwargs):
    torch.manual_seed(0)
    trainer = _trainer(trainer_cls, callbacks, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    return trainer


def _held(cb):
    """The training weights the callback keeps while the module holds the average (after fit)."""
    assert cb._swapped
    return cb._average


# ---------------------------------------------------------------------------------------------- arguments
def test_arguments():
    with pytest.raises(TypeError, match="unexpected"):
        WeightAveraging(decay=0.9)
    with pytest.raises(TypeError, match="callable"):
        WeightAveraging(avg_fn=3)
    with pytest.raises(TypeError, match="decay"):
        EMAWeightAveraging(avg_fn=lambda a, b, n: a)
    with pytest.raises(ValueError, match="decay"):
        EMAWeightAveraging(decay=1.5)
    assert WeightAveraging(device="cpu")._device == torch.device("cpu")


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), [True] * 6),
    (dict(update_every_n_steps=2), [True, False, True, False, True, False]),
    (dict(update_starting_at_step=3), [False, False, False, True, True, True]),
    (dict(update_every_n_steps=2, update_starting_at_step=3), [False, False, False, False, True, False]),
])
def test_ema_should_update_steps(kwargs, expected):
    cb = EMAWeightAveraging(**kwargs)
    assert [cb.should_update(step_idx=i) for i in range(6)] == expected
    assert not cb.should_update(epoch_idx=5)


def test_ema_should_update_epochs():
    cb = EMAWeightAveraging(update_starting_at_epoch=2)
    assert [cb.should_update(epoch_idx=i) for i in range(4)] == [False, False, True, True]


# ---------------------------------------------------------------------------------------------- against Lightning
@pytest.mark.parametrize("kwargs", [
    dict(decay=0.9),
    dict(decay=0.8, update_every_n_steps=3, update_starting_at_step=2),
    dict(decay=0.5, update_every_n_steps=0, update_starting_at_epoch=1),
    dict(decay=0.9, use_buffers=False),
], ids=["every_step", "every_3_from_2", "epochs", "no_buffers"])
def test_ema_matches_lightning(kwargs):
    pl = pytest.importorskip("lightning.pytorch")
    ours, theirs = make_module(L.LightningModule)(), make_module(pl.LightningModule)()
    _fit(L.Trainer, ours, [EMAWeightAveraging(**kwargs)])
    _fit(pl.Trainer, theirs, [pl.callbacks.EMAWeightAveraging(**kwargs)])
    # validation (sanity check included) ran with the averaged weights in both
    assert ours.val_losses == pytest.approx(theirs.val_losses, rel=1e-5, abs=1e-6)
    # after fit the module holds the averaged weights
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("fn", ["none", "avg_fn", "multi_avg_fn"])
def test_weight_averaging_matches_lightning(fn):
    pl = pytest.importorskip("lightning.pytorch")
    from torch.optim.swa_utils import get_ema_avg_fn, get_ema_multi_avg_fn

    kwargs = {"none": {}, "avg_fn": {"avg_fn": get_ema_avg_fn(0.7)},
              "multi_avg_fn": {"multi_avg_fn": get_ema_multi_avg_fn(0.7)}}[fn]
    ours, theirs = make_module(L.LightningModule)(), make_module(pl.LightningModule)()
    _fit(L.Trainer, ours, [WeightAveraging(**kwargs)])
    _fit(pl.Trainer, theirs, [pl.callbacks.WeightAveraging(**kwargs)])
    assert ours.val_losses == pytest.approx(theirs.val_losses, rel=1e-5, abs=1e-6)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- behaviour
def test_ema_by_hand_and_training_unperturbed():
    """The average is the EMA of the weights after every step; validation sees it; training does not."""
    decay = 0.8
    trajectory = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trajectory.append(pl_module.net[0].weight.detach().clone())

    plain = make_module(L.LightningModule)()
    _fit(L.Trainer, plain, [])
    model = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=decay)
    _fit(L.Trainer, model, [Record(), cb])

    # the training weights follow exactly the run without the callback
    for a, b in zip(list(plain.parameters()) + list(plain.buffers()), _held(cb), strict=True):
        assert torch.equal(a, b)
    ema = trajectory[0]
    expected_at_val = []
    for i, w in enumerate(trajectory[1:], start=2):
        ema = decay * ema + (1 - decay) * w
        if i % 4 == 0:
            expected_at_val.append(ema.clone())
    torch.testing.assert_close(model.net[0].weight, ema, rtol=1e-5, atol=1e-6)
    # sanity check: the average starts as the initial weights; each epoch's validation: the EMA so far
    torch.testing.assert_close(model.val_weights[0], make_module(L.LightningModule)().net[0].weight)
    for seen, expected in zip(model.val_weights[1:], expected_at_val):
        torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-6)
    assert len(model.val_weights) == 4


def test_update_uses_foreach_kernels(monkeypatch):
    """One fused lerp per (device, dtype) group and optimizer step: no per-tensor Python loop."""
    calls = []
    real = torch._foreach_lerp_

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_lerp_", counting)
    model = make_module(L.LightningModule)()
    _fit(L.Trainer, model, [EMAWeightAveraging(decay=0.9)], max_epochs=1, num_sanity_val_steps=0)
    # 4 steps; the first copies; the float tensors (6 parameters, running mean and var) go in one call
    assert calls == [8, 8, 8]


def test_custom_should_update_at_epoch_end():
    class EpochAverage(WeightAveraging):
        def should_update(self, step_idx=None, epoch_idx=None):
            return epoch_idx is not None

    snapshots = []

    class Snap(L.Callback):
        monitors_metrics = True  # after the module's and the averaging callback's on_train_epoch_end

        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append([p.detach().clone() for p in pl_module.parameters()])

    model = make_module(L.LightningModule)()
    cb = EpochAverage(use_buffers=False)
    _fit(L.Trainer, model, [cb, Snap()])
    assert cb._n_averaged == 3
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.detach(), torch.stack([s[i] for s in snapshots]).mean(0))


def test_average_on_another_device_than_the_weights():
    model = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=0.9, device="cpu")
    _fit(L.Trainer, model, [cb], max_epochs=1)
    assert all(t.device == torch.device("cpu") for t in cb._average)


def test_test_after_fit_uses_the_average():
    model = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=0.9)
    trainer = _fit(L.Trainer, model, [cb])
    averaged = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(model, verbose=False)
    for a, p in zip(averaged, model.parameters()):
        assert torch.equal(a, p)


def test_failed_validation_swaps_back():
    class Failing(make_module(L.LightningModule)):
        def validation_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("boom")
            return super().validation_step(batch, batch_idx)

    model = Failing()
    cb = EMAWeightAveraging(decay=0.5)
    trajectory = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trajectory.append(pl_module.net[0].weight.detach().clone())

    with pytest.raises(RuntimeError, match="boom"):
        _fit(L.Trainer, model, [Record(), cb])
    assert not cb._swapped
    assert torch.equal(model.net[0].weight, trajectory[-1])


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_holds_the_average_and_the_training_weights(tmp_path):
    saved = {}

    class SaveDuringValidation(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs):
            if trainer.current_epoch == 1 and not trainer.sanity_checking and "val" not in saved:
                trainer.save_checkpoint(tmp_path / "val.ckpt")
                saved["val"] = [t.detach().clone() for t in cb._average], [
                    t.detach().clone() for t in list(pl_module.parameters()) + list(pl_module.buffers())]

    model = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=0.9)
    trainer = _fit(L.Trainer, model, [cb, SaveDuringValidation()])
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    ckpt = torch.load(tmp_path / "end.ckpt", weights_only=True)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]  # the held order
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][name], value), name  # after fit, the module holds the average
    for name, raw in zip(names, _held(cb)):
        assert torch.equal(ckpt["current_model_state"][name], raw), name
    assert int(ckpt["averaging_state"]["n_averaged"]) == 12
    assert ckpt["callbacks"]["EMAWeightAveraging"]["latest_update_step"] == 12

    loaded = make_module(L.LightningModule).load_from_checkpoint(tmp_path / "end.ckpt")
    for (name, a), b in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name

    # saved while the average was swapped in for validation: still the average in state_dict
    ckpt = torch.load(tmp_path / "val.ckpt", weights_only=True)
    raw, averaged = saved["val"]
    for name, r, a in zip(names, raw, averaged):
        assert torch.equal(ckpt["state_dict"][name], a), name
        assert torch.equal(ckpt["current_model_state"][name], r), name


def test_weights_only_checkpoint_gets_the_average():
    """For a weights-only checkpoint (no optimizer states) on_save_checkpoint puts only the average in state_dict.
    (The trainer calls the hook for such checkpoints once it honours `_saves_into_weights_only_checkpoints`.)"""
    model = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=0.9)
    trainer = _fit(L.Trainer, model, [cb], max_epochs=1)
    cb._swap(model)  # back to the training weights in the module, as during training
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": model.state_dict()}
    cb.on_save_checkpoint(trainer, model, checkpoint)
    assert set(checkpoint) == {"state_dict"}
    saved = {k: v.clone() for k, v in checkpoint["state_dict"].items()}  # (written to disk at once, normally)
    cb._swap(model)  # the average in the module
    for name, value in model.state_dict().items():
        assert torch.equal(saved[name], value), name
    assert any(not torch.equal(raw[k], model.state_dict()[k]) for k in raw)
    checkpoint = {"state_dict": model.state_dict()}  # saved while the average is in place: left as it is
    cb.on_save_checkpoint(trainer, model, checkpoint)
    for name, value in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][name], value), name


def test_evaluating_a_checkpoint_uses_the_average(tmp_path):
    model = make_module(L.LightningModule)()
    trainer = _fit(L.Trainer, model, [EMAWeightAveraging(decay=0.9)])
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    fresh = make_module(L.LightningModule)()
    tester = _trainer(L.Trainer, [EMAWeightAveraging(decay=0.9)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about
        tester.validate(fresh, ckpt_path=tmp_path / "ema.ckpt", verbose=False)
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_without_averaging_state(tmp_path):
    model = make_module(L.LightningModule)()
    trainer = _fit(L.Trainer, model, [], max_epochs=1)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    cb = EMAWeightAveraging(decay=0.9)
    resumed = make_module(L.LightningModule)()
    trainer = _trainer(L.Trainer, [cb], max_epochs=2)
    with pytest.warns(UserWarning, match="not saved with EMAWeightAveraging"):
        trainer.fit(resumed, ckpt_path=tmp_path / "plain.ckpt")
    assert cb._n_averaged == 4


def test_continuing_from_the_checkpoint_saved_after_fit(tmp_path):
    """After fit the callback keeps the training weights: training on from that checkpoint is exact."""
    full = make_module(L.LightningModule)()
    cb_full = EMAWeightAveraging(decay=0.9)
    _fit(L.Trainer, full, [cb_full], max_epochs=4)

    first = make_module(L.LightningModule)()
    trainer = _fit(L.Trainer, first, [EMAWeightAveraging(decay=0.9)], max_epochs=2)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    second = make_module(L.LightningModule)()
    cb = EMAWeightAveraging(decay=0.9)
    trainer = _trainer(L.Trainer, [cb], max_epochs=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(second, ckpt_path=tmp_path / "two.ckpt")
    for (name, a), b in zip(full.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(_held(cb_full), _held(cb)):
        assert torch.equal(a, b)


def _harness():
    path = Path(__file__).resolve().parents[1] / "trainer" / "test_exact_resume.py"
    spec = importlib.util.spec_from_file_location("_exact_resume_harness_ema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resume_run(H, make_cb, kill, tmp_path, killer=None, **kwargs):
    torch.manual_seed(1)
    logger, model, cb = H.Recorder(), H.Model(), make_cb()
    if kill is None:
        H._trainer(logger, [cb], **kwargs).fit(model)
        return model, logger.rows, cb
    path = tmp_path / "killed.ckpt"
    killer = (killer or H.KillAt)(*kill, path)
    with pytest.raises(H.Killed):
        H._trainer(logger, [killer, make_cb()], **kwargs).fit(model)
    before = list(logger.rows)
    torch.manual_seed(12345)
    logger2, resumed, cb = H.Recorder(), H.Model(), make_cb()
    H._trainer(logger2, [cb], **kwargs).fit(resumed, ckpt_path=path)
    return resumed, before + logger2.rows, cb


def _assert_same_runs(H, a, b):
    H._assert_same(a[:2], b[:2])  # the averaged weights the module ends with, and every logged value
    for x, y in zip(_held(a[2]), _held(b[2])):  # the training weights
        assert torch.equal(x, y)


@pytest.mark.parametrize("point", ["mid_epoch", "last_batch", "epoch_end", "epoch_start", "during_validation",
                                   "validation_end"])
def test_resume_is_bit_exact(point, tmp_path):
    """Killed anywhere (validation included, where the average is swapped in) and resumed, a run with EMA
    ends bit for bit like an uninterrupted one: same averaged and training weights, same logs (the
    validation losses are the averaged model's)."""
    H = _harness()

    def make_cb():
        return EMAWeightAveraging(decay=0.7, update_every_n_steps=2)

    _assert_same_runs(H, _resume_run(H, make_cb, None, tmp_path),
                      _resume_run(H, make_cb, H.KILL_POINTS[point], tmp_path))


def test_resume_is_bit_exact_with_accumulation(tmp_path):
    H = _harness()

    def make_cb():
        return EMAWeightAveraging(decay=0.7)

    kill = ("on_train_batch_end", 1, 2)  # half way through an accumulation window
    _assert_same_runs(H, _resume_run(H, make_cb, None, tmp_path, accumulate_grad_batches=2),
                      _resume_run(H, make_cb, kill, tmp_path, accumulate_grad_batches=2))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_is_bit_exact_when_saved_before_the_update(accumulate, tmp_path):
    """A checkpoint written in on_train_batch_end by a callback that runs before the averaging callback
    still holds the update for the step just taken (the resumed run does not repeat that hook), and its
    saved state does not ask for that update again (with accumulation the next batch does not step)."""
    H = _harness()

    class EarlyKill(H.KillAt):
        _monitors_metrics = False  # runs in list order, i.e. before the averaging callback

    def make_cb():
        return EMAWeightAveraging(decay=0.7)

    kill = ("on_train_batch_end", 1, 3)  # with accumulation: closes a window
    _assert_same_runs(H, _resume_run(H, make_cb, None, tmp_path, accumulate_grad_batches=accumulate),
                      _resume_run(H, make_cb, kill, tmp_path, killer=EarlyKill, accumulate_grad_batches=accumulate))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_updates_do_not_synchronize_with_the_host():
    class Cuda(make_module(L.LightningModule)):
        def train_dataloader(self):
            return DataLoader(TensorDataset(*_data(400)), batch_size=10, shuffle=True)

    checked = []

    class SyncOn(L.Callback):  # around the averaging callback's on_train_batch_end, which runs in between
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("error")

    class SyncOff(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            checked.append(torch.cuda.get_sync_debug_mode())
            torch.cuda.set_sync_debug_mode("default")

    cb = EMAWeightAveraging(decay=0.9)
    try:
        _fit(L.Trainer, Cuda(), [SyncOn(), cb, SyncOff()], max_epochs=1, accelerator="gpu", devices=1,
             num_sanity_val_steps=0, limit_val_batches=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert checked == [2] * 40 and cb._n_averaged == 40
    assert all(t.is_cuda for t in cb._average)
