"""GradScaler through the Trainer: inf gradients skip the step (and the step scheduler), the scale backs off,
and hooks and clipping see unscaled gradients. Runs on CPU with ``torch.amp.GradScaler("cpu")`` passed in a
``MixedPrecision`` plugin; the CUDA variants (real fp16 GradScaler, bf16 autocast, 16/bf16-true) are marked
``gpu`` and skipped without CUDA.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import featherlight
from featherlight.precision import HalfPrecision, MixedPrecision

N_SAMPLES, BATCH_SIZE = 24, 4  # 6 batches
INF_BATCH = 1  # training_step returns an infinite loss on this batch_idx (first epoch only)
FLAGS = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
             num_sanity_val_steps=0, limit_val_batches=0, devices=1)


def _dataset():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N_SAMPLES, 8, generator=g), torch.randn(N_SAMPLES, 1, generator=g))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _params_clone(module):
    return [p.detach().clone() for p in module.parameters()]


def _grads_clone(module):
    return [p.grad.detach().clone() for p in module.parameters()]


def _same(a, b):
    """Bitwise equal lists of tensors; NaN counts as equal to NaN (the gradients of the inf step)."""
    return len(a) == len(b) and all(torch.allclose(u, v, rtol=0, atol=0, equal_nan=True) for u, v in zip(a, b))


def _total_norm(tensors):
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])).item()


def _sgd_and_step_scheduler(params):
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)


class ScalerModule(featherlight.LightningModule):
    inject_inf = True

    def __init__(self):
        super().__init__()
        self.net = _net()
        self.rec = {k: [] for k in ("before", "after", "pre_clip", "post_clip", "lr", "scale", "sched_steps")}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        if self.inject_inf and batch_idx == INF_BATCH and self.current_epoch == 0:
            loss = loss * float("inf")
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self.rec["before"].append(_params_clone(self))

    def on_before_optimizer_step(self, optimizer):
        self.rec["pre_clip"].append(_grads_clone(self))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.rec["after"].append(_params_clone(self))
        self.rec["post_clip"].append(_grads_clone(self))
        self.rec["lr"].append(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.rec["sched_steps"].append(self.trainer.lr_scheduler_configs[0].scheduler.last_epoch)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.rec["scale"].append(scaler.get_scale() if scaler is not None else None)

    def configure_optimizers(self):
        opt, sched = _sgd_and_step_scheduler(self.parameters())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _raw(device, dtype, scaler, clip, acc=1, epochs=1):
    """The reference loop: autocast forward, scaled backward, unscale_, clip, scaler.step/update, and the step
    scheduler only when the optimizer really stepped."""
    net = _net().to(device)
    opt, sched = _sgd_and_step_scheduler(net.parameters())
    loader = DataLoader(_dataset(), batch_size=BATCH_SIZE)
    rec = {k: [] for k in ("pre_clip", "post_clip", "lr", "scale", "skipped", "sched_steps")}
    n = len(loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            with torch.autocast(device, dtype=dtype):
                loss = F.mse_loss(net(x), y)
            if i == INF_BATCH and epoch == 0:
                loss = loss * float("inf")
            if i % acc == 0:
                opt.zero_grad()
            scaler.scale(loss / acc).backward()
            if (i + 1) % acc == 0 or i == n - 1:
                scaler.unscale_(opt)
                rec["pre_clip"].append(_grads_clone(net))
                algorithm, value = clip
                if algorithm == "norm":
                    torch.nn.utils.clip_grad_norm_(list(net.parameters()), value)
                else:
                    torch.nn.utils.clip_grad_value_(list(net.parameters()), value)
                before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                skipped = scaler.get_scale() < before
                rec["skipped"].append(skipped)
                if not skipped:
                    sched.step()
            rec["post_clip"].append(_grads_clone(net))
            rec["lr"].append(opt.param_groups[0]["lr"])
            rec["scale"].append(scaler.get_scale())
            rec["sched_steps"].append(sched.last_epoch)
    return net, rec


def _fit(precision, device, clip, acc=1, epochs=1, plugin=True, init_scale=2.0 ** 10):
    model = ScalerModule()
    flags = dict(FLAGS, max_epochs=epochs, accelerator=device, accumulate_grad_batches=acc,
                 gradient_clip_val=clip[1], gradient_clip_algorithm=clip[0])
    if plugin:
        scaler = torch.amp.GradScaler(device, init_scale=init_scale)
        flags["plugins"] = MixedPrecision(precision, device, scaler=scaler)
    else:
        flags["precision"] = precision
    trainer = featherlight.Trainer(**flags)
    trainer.fit(model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    return model, trainer


def _check_inf_step(precision, device, clip, acc, plugin=True, init_scale=None):
    if init_scale is None:
        init_scale = 2.0 ** 10 if plugin else 65536.0  # the real default when the Trainer builds the scaler itself
    model, trainer = _fit(precision, device, clip, acc=acc, epochs=2, plugin=plugin, init_scale=init_scale)
    net, ref = _raw(device, torch.float16, torch.amp.GradScaler(device, init_scale=init_scale), clip, acc, 2)
    rec = model.rec
    n = N_SAMPLES // BATCH_SIZE
    window_end = (INF_BATCH // acc + 1) * acc - 1  # the batch that closes the window holding the inf

    # the scaler skipped the window with the inf, and the whole run matches the raw GradScaler loop bitwise
    assert ref["skipped"][INF_BATCH // acc] is True
    for a, b in zip(model.parameters(), net.parameters()):
        assert torch.equal(a.detach(), b.detach())
    # ...the optimizer step was skipped: the weights at the end of that window are those at its start
    start = window_end + 1 - acc
    assert all(torch.equal(u, v) for u, v in zip(rec["before"][start], rec["after"][window_end]))
    # (while a real step did move them)
    moved = ref["skipped"].index(False)
    assert not all(torch.equal(u, v) for u, v in zip(rec["before"][moved * acc], rec["after"][moved * acc + acc - 1]))
    # ...the step scheduler did not advance on it (and did on every real step)
    assert rec["sched_steps"] == ref["sched_steps"]
    assert rec["lr"] == ref["lr"]
    assert rec["sched_steps"][window_end] == (rec["sched_steps"][window_end - acc] if window_end >= acc else 0)
    per_epoch = [min((w + 1) * acc, n) - 1 for w in range(-(-n // acc))]  # the batches that close a window
    ends = per_epoch + [e + n for e in per_epoch]
    windows = len(ends)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == windows - sum(ref["skipped"])
    assert trainer.global_step == windows  # a skipped step still counts as a step, as in Lightning
    # ...the scale backed off by half on it
    assert rec["scale"] == ref["scale"]
    scale_before = init_scale if window_end < acc else rec["scale"][window_end - acc]
    assert rec["scale"][window_end] == scale_before * 0.5
    assert trainer.precision_plugin.scaler.get_scale() == ref["scale"][-1]
    # on_before_optimizer_step saw unscaled, unclipped gradients; clipping acted on unscaled gradients
    assert len(rec["pre_clip"]) == len(ref["pre_clip"]) == windows
    for got, want in zip(rec["pre_clip"], ref["pre_clip"]):
        assert _same(got, want)
    assert len(rec["post_clip"]) == len(ref["post_clip"]) == 2 * n
    for got, want in zip(rec["post_clip"], ref["post_clip"]):
        assert _same(got, want)
    algorithm, value = clip
    finite = [i for i, skipped in enumerate(ref["skipped"]) if not skipped]
    for w in finite:
        pre, post = rec["pre_clip"][w], rec["post_clip"][ends[w]]
        if algorithm == "norm":
            assert _total_norm(pre) > value
            assert _total_norm(post) == pytest.approx(value, rel=1e-3)  # not value * scale, not value / scale
        else:
            assert max(g.abs().max().item() for g in pre) > value
            assert max(g.abs().max().item() for g in post) == pytest.approx(value)
    return model, trainer


@pytest.mark.parametrize("clip", [("norm", 0.05), ("value", 0.01)])
@pytest.mark.parametrize("acc", [1, 2])
def test_inf_gradients_skip_step_cpu(clip, acc):
    """fp16 autocast on CPU with ``torch.amp.GradScaler("cpu")``; acc 2 puts the inf in the first window."""
    model, trainer = _check_inf_step("16-mixed", "cpu", clip, acc)
    assert trainer.precision == "16-mixed"


def test_unscaled_norm_matches_an_unscaled_backward():
    """The norm seen in on_before_optimizer_step is the true gradient norm, not the scaled one."""
    scale = 2.0 ** 10
    model, _ = _fit("16-mixed", "cpu", ("norm", 1e9), init_scale=scale)  # clipping on but never biting
    loader = DataLoader(_dataset(), batch_size=BATCH_SIZE)
    for i, (x, y) in enumerate(loader):
        if i == INF_BATCH:
            continue
        net = _net()
        with torch.no_grad():
            for p, w in zip(net.parameters(), model.rec["before"][i]):
                p.copy_(w)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(net(x), y)
        loss.backward()  # no scaler at all
        true_norm = _total_norm(_grads_clone(net))
        seen = _total_norm(model.rec["pre_clip"][i])
        assert seen == pytest.approx(true_norm, rel=1e-2)
        assert seen != pytest.approx(true_norm * scale, rel=0.5)


def test_plugin_is_used_and_checkpointed():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = featherlight.Trainer(**dict(FLAGS, accelerator="cpu", max_epochs=1), plugins=plugin)
    assert trainer.precision_plugin is plugin
    assert trainer.precision == "16-mixed"
    trainer.fit(ScalerModule(), DataLoader(_dataset(), batch_size=BATCH_SIZE))
    assert plugin.state_dict()["scale"] == scaler.get_scale() == 2.0 ** 9


def test_plugin_in_a_list_is_used():
    """Lightning accepts ``plugins`` as one plugin or a list of them."""
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = featherlight.Trainer(**dict(FLAGS, accelerator="cpu", max_epochs=1), plugins=[plugin])
    assert trainer.precision_plugin is plugin


def test_lbfgs_with_a_scaler_raises():
    class LBFGSModule(ScalerModule):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), max_iter=2)

    trainer = featherlight.Trainer(**dict(FLAGS, accelerator="cpu", max_epochs=1),
                                   plugins=MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")))
    with pytest.raises(TypeError, match="LBFGS"):
        trainer.fit(LBFGSModule(), DataLoader(_dataset(), batch_size=BATCH_SIZE))


def test_half_true_parity_cpu():
    """``bf16-true``: module and inputs in bfloat16; matches a raw bfloat16 loop bitwise."""
    _check_true_precision("bf16-true", "cpu")


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("clip", [("norm", 0.05), ("value", 0.01)])
@pytest.mark.parametrize("acc", [1, 2])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inf_gradients_skip_step_cuda_16_mixed(clip, acc):
    """``precision="16-mixed"`` on CUDA builds a real GradScaler itself (default init scale 2**16)."""
    _, trainer = _check_inf_step("16-mixed", "cuda", clip, acc, plugin=False)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    assert trainer.precision_plugin.scaler is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixed_parity_cuda():
    class NoInf(ScalerModule):
        inject_inf = False

    model = NoInf()
    trainer = featherlight.Trainer(**dict(FLAGS, accelerator="cuda", max_epochs=1, precision="bf16-mixed",
                                          gradient_clip_val=0.05))
    trainer.fit(model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    assert trainer.precision_plugin.scaler is None
    net = _net().cuda()
    opt, sched = _sgd_and_step_scheduler(net.parameters())
    for i, (x, y) in enumerate(DataLoader(_dataset(), batch_size=BATCH_SIZE)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(net(x.cuda()), y.cuda())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), 0.05)
        opt.step()
        sched.step()
    for a, b in zip(model.parameters(), net.parameters()):
        assert torch.equal(a.detach(), b.detach())
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == sched.last_epoch


def _check_true_precision(precision, device):
    class M(featherlight.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            assert x.dtype == y.dtype == dtype and self.net[0].weight.dtype == dtype
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float16
    model = M()
    trainer = featherlight.Trainer(**dict(FLAGS, accelerator=device, max_epochs=2, precision=precision,
                                          gradient_clip_val=0.05))
    trainer.fit(model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    assert isinstance(trainer.precision_plugin, HalfPrecision)
    net = _net().to(device=device, dtype=dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        for x, y in DataLoader(_dataset(), batch_size=BATCH_SIZE):
            loss = F.mse_loss(net(x.to(device, dtype)), y.to(device, dtype))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), 0.05)
            opt.step()
    for a, b in zip(model.parameters(), net.parameters()):
        assert a.dtype == dtype
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_true_parity_cuda(precision):
    _check_true_precision(precision, "cuda")
