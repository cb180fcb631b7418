"""Bitwise parity of the optimisation step: featherlight's Trainer against a hand-written PyTorch loop.

For every configuration the same model is trained twice, once by ``Trainer.fit`` and once by a raw loop
that does Lightning's documented work in Lightning's order (loss / accumulate, zero_grad at the start of
each accumulation window after the forward, step every ``accumulate`` batches or on the epoch's last one,
clip after unscaling, "step" schedulers after each optimizer step, "epoch" schedulers after the last batch).
The final weights must be *bitwise* equal. Where Lightning is installed, a few configurations also run under
Lightning to prove the raw loop is the right reference.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import featherlight
from featherlight.utilities.exceptions import MisconfigurationException

N_SAMPLES, BATCH_SIZE = 26, 4  # 7 batches, the last one short: accumulate 2 and 3 leave a short last window
N_BATCHES = math.ceil(N_SAMPLES / BATCH_SIZE)
EPOCHS = 2
RUN_SEED = 1234  # the global seed right before the loop (dropout, shuffling)
FLAGS = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
             num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", devices=1)


def _lightning():
    return pytest.importorskip("lightning.pytorch")


def _lightning_or_none():
    """Lightning when installed (for an extra comparison at the end of a test), else None: no skip."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        return None
    return pl


# ---------------------------------------------------------------------------------------------- the shared pieces
def _dataset(n=N_SAMPLES):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g))


def _loader(cfg, dataset=None):
    dataset = dataset if dataset is not None else _dataset()
    shuffle = cfg.get("shuffle", "none")
    if shuffle == "none":
        return DataLoader(dataset, batch_size=BATCH_SIZE)
    if shuffle == "generator":  # its own generator: the global RNG is not involved
        return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(7))
    assert shuffle == "global"  # the sampler's seed comes from the global RNG, interleaved with dropout
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)


def _net(dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16), nn.ReLU()] + ([nn.Dropout(0.1)] if dropout else []) + [nn.Linear(16, 1)]
    return nn.Sequential(*layers)


def _optimizer(params, cfg):
    if cfg.get("opt", "sgd") == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01)


def _autocast(cfg):
    if cfg.get("precision") == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _module_class(L):
    class ParityModule(L.LightningModule):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.net = _net(cfg.get("dropout", False))
            self.estimated = None
            self.onecycle = None

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = _optimizer(self.parameters(), self.cfg)
            sched = self.cfg.get("sched")
            if sched is None:
                return opt
            if sched == "steplr":
                return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}
            assert sched == "onecycle"
            self.estimated = self.trainer.estimated_stepping_batches
            self.onecycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=self.estimated)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.onecycle, "interval": "step"}}

    return ParityModule


def _fit(L, cfg, epochs=EPOCHS, module=None, loader=None, **kwargs):
    model = module if module is not None else _module_class(L)(cfg)
    flags = dict(FLAGS, max_epochs=epochs, accumulate_grad_batches=cfg.get("acc", 1))
    if cfg.get("clip"):
        flags.update(gradient_clip_val=cfg["clip"][1], gradient_clip_algorithm=cfg["clip"][0])
    if cfg.get("precision"):
        flags["precision"] = cfg["precision"]
    flags.update(kwargs)
    trainer = L.Trainer(**flags)
    loader = loader if loader is not None else _loader(cfg)
    torch.manual_seed(RUN_SEED)
    trainer.fit(model, loader)
    return model, trainer


def _raw(cfg, epochs=EPOCHS, skip=()):
    """The reference loop. ``skip``: batch indices whose training_step "returns None" (no backward)."""
    net = _net(cfg.get("dropout", False))
    opt = _optimizer(net.parameters(), cfg)
    loader = _loader(cfg)
    acc = cfg.get("acc", 1)
    n = len(loader)
    sched = None
    if cfg.get("sched") == "steplr":
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    elif cfg.get("sched") == "onecycle":
        total = math.ceil(n / acc) * epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total)
    torch.manual_seed(RUN_SEED)
    steps = 0
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            with _autocast(cfg):
                loss = F.mse_loss(net(x), y)
            if i % acc == 0:
                opt.zero_grad()
            if i not in skip:
                (loss / acc).backward()
            if (i + 1) % acc == 0 or i == n - 1:
                if cfg.get("clip"):
                    algorithm, value = cfg["clip"]
                    params = [p for p in net.parameters() if p.grad is not None]
                    if params and algorithm == "norm":
                        torch.nn.utils.clip_grad_norm_(params, value)
                    elif params:
                        torch.nn.utils.clip_grad_value_(params, value)
                opt.step()
                steps += 1
                if cfg.get("sched") == "onecycle":
                    sched.step()
        if cfg.get("sched") == "steplr":
            sched.step()
    return net, opt, sched, steps


def _assert_same_weights(trained, reference):
    a, b = dict(trained.named_parameters()), dict(reference.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].detach(), b[name].detach()), f"{name} differs by {(a[name] - b[name]).abs().max()}"


def _assert_same_optimizer_state(opt, ref):
    sa, sb = opt.state_dict(), ref.state_dict()
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][k][name])), (k, name)


CONFIGS = {
    # optimizer x accumulation (7 batches: acc 2 and 3 end each epoch on a short window)
    "sgd-acc1": dict(opt="sgd", acc=1),
    "sgd-acc2": dict(opt="sgd", acc=2),
    "sgd-acc3": dict(opt="sgd", acc=3),
    "adam-acc1": dict(opt="adam", acc=1),
    "adam-acc2": dict(opt="adam", acc=2),
    "adam-acc3": dict(opt="adam", acc=3),
    # shuffling: with the loader's own generator, and from the global RNG (interleaved with dropout)
    "sgd-shuffle-generator": dict(opt="sgd", shuffle="generator"),
    "sgd-shuffle-global": dict(opt="sgd", shuffle="global"),
    "adam-acc3-shuffle-generator-dropout": dict(opt="adam", acc=3, shuffle="generator", dropout=True),
    "adam-acc2-shuffle-global-dropout": dict(opt="adam", acc=2, shuffle="global", dropout=True),
    "sgd-dropout": dict(opt="sgd", dropout=True),
    # clipping, after the whole window's gradients are in
    "sgd-acc2-clip-norm": dict(opt="sgd", acc=2, clip=("norm", 0.05)),
    "sgd-acc3-clip-value": dict(opt="sgd", acc=3, clip=("value", 0.01)),
    "adam-clip-norm": dict(opt="adam", clip=("norm", 0.05)),
    "adam-clip-value": dict(opt="adam", clip=("value", 0.01)),
    # schedulers
    "sgd-steplr": dict(opt="sgd", sched="steplr"),
    "adam-acc2-steplr": dict(opt="adam", acc=2, sched="steplr"),
    "sgd-onecycle": dict(opt="sgd", sched="onecycle"),
    "adam-acc3-onecycle": dict(opt="adam", acc=3, sched="onecycle"),
    # bf16 autocast on CPU
    "sgd-bf16": dict(opt="sgd", precision="bf16-mixed"),
    "adam-acc2-bf16-clip-norm-dropout": dict(opt="adam", acc=2, precision="bf16-mixed", clip=("norm", 0.05),
                                             dropout=True),
    # everything at once
    "adam-acc3-bf16-onecycle-clip-value-shuffle-global-dropout": dict(
        opt="adam", acc=3, precision="bf16-mixed", sched="onecycle", clip=("value", 0.01), shuffle="global",
        dropout=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_weights_match_raw_loop(name):
    cfg = CONFIGS[name]
    model, trainer = _fit(featherlight, cfg)
    net, opt, sched, steps = _raw(cfg)
    _assert_same_weights(model.net, net)
    _assert_same_optimizer_state(trainer.optimizers[0], opt)
    assert trainer.global_step == steps == math.ceil(N_BATCHES / cfg.get("acc", 1)) * EPOCHS
    if cfg.get("sched") == "onecycle":
        # sized by estimated_stepping_batches: exactly the raw number of steps, and the schedule ran to its end
        assert model.estimated == steps
        assert model.onecycle.last_epoch == steps == sched.last_epoch
        assert trainer.lr_scheduler_configs[0].scheduler is model.onecycle
        with pytest.raises(ValueError, match="Tried to step"):
            model.onecycle.step()  # one more step would overrun the schedule
    elif sched is not None:
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == sched.last_epoch == EPOCHS


@pytest.mark.parametrize("name", ["adam-acc3", "sgd-acc2-clip-norm", "adam-acc2-shuffle-global-dropout",
                                  "adam-acc3-bf16-onecycle-clip-value-shuffle-global-dropout"])
def test_lightning_matches_raw_loop(name):
    """The reference loop is Lightning's semantics: Lightning itself reproduces it bitwise."""
    pl = _lightning()
    cfg = CONFIGS[name]
    model, trainer = _fit(pl, cfg)
    net, _, _, steps = _raw(cfg)
    _assert_same_weights(model.net, net)
    assert trainer.global_step == steps


# ---------------------------------------------------------------------------------------------- RNG and validation
def _rng_module_class(L):
    class WithValidation(_module_class(L)):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            torch.rand(3)  # draws from the global RNG, as a stochastic metric or augmentation would
            self.log("val_loss", F.mse_loss(self.net(x), y))

    return WithValidation


def _raw_with_validation(cfg, val_loader):
    """Like ``_raw`` (acc 1, no clipping), plus a validation epoch after each training epoch.

    The sanity check is not mirrored: the Trainer runs it inside ``isolate_rng``."""
    net = _net(True)
    opt = _optimizer(net.parameters(), cfg)
    loader = _loader(cfg)
    torch.manual_seed(RUN_SEED)
    for _ in range(EPOCHS):
        for x, y in loader:
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, y in val_loader:
                torch.rand(3)
                net(x)
        net.train()
    return net


@pytest.mark.parametrize("L_name", ["featherlight", "lightning"])
def test_sanity_check_does_not_shift_the_rng(L_name):
    L = featherlight if L_name == "featherlight" else _lightning()
    cfg = dict(opt="adam", shuffle="global", dropout=True)
    val_loader = DataLoader(_dataset(10), batch_size=4)
    model = _rng_module_class(L)(cfg)
    trainer = L.Trainer(**dict(FLAGS, num_sanity_val_steps=2, limit_val_batches=1.0, max_epochs=EPOCHS))
    torch.manual_seed(RUN_SEED)
    trainer.fit(model, _loader(cfg), val_loader)
    _assert_same_weights(model.net, _raw_with_validation(cfg, val_loader))


# ---------------------------------------------------------------------------------------------- estimated_stepping_batches
ESTIMATES = {
    # name: (trainer kwargs, expected estimated_stepping_batches, expected global_step after fit)
    "plain": (dict(max_epochs=2), 14, 14),
    "acc2": (dict(max_epochs=2, accumulate_grad_batches=2), 8, 8),
    "acc3": (dict(max_epochs=2, accumulate_grad_batches=3), 6, 6),
    "acc8-more-than-an-epoch": (dict(max_epochs=3, accumulate_grad_batches=8), 3, 3),
    "limit-int": (dict(max_epochs=2, limit_train_batches=5, accumulate_grad_batches=2), 6, 6),
    "limit-float": (dict(max_epochs=2, limit_train_batches=0.5, accumulate_grad_batches=2), 4, 4),
    "max-steps": (dict(max_epochs=2, max_steps=5), 5, 5),
    "max-steps-above-epochs": (dict(max_epochs=2, max_steps=100, accumulate_grad_batches=2), 8, 8),
    "max-steps-no-epoch-limit": (dict(max_epochs=-1, max_steps=9, accumulate_grad_batches=3), 9, 9),
}


class _EstimateRecorder:
    @staticmethod
    def make(L):
        class M(_module_class(L)):
            def configure_optimizers(self):
                self.estimated = self.trainer.estimated_stepping_batches
                return super().configure_optimizers()

        return M(dict(opt="sgd"))


@pytest.mark.parametrize("name", sorted(ESTIMATES))
def test_estimated_stepping_batches(name):
    kwargs, expected, expected_steps = ESTIMATES[name]
    flags = dict(FLAGS, **kwargs)
    model = _EstimateRecorder.make(featherlight)
    trainer = featherlight.Trainer(**flags)
    trainer.fit(model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    assert model.estimated == expected
    assert trainer.estimated_stepping_batches == expected
    assert trainer.global_step == expected_steps
    pl = _lightning_or_none()
    if pl is None:
        return
    ref = _EstimateRecorder.make(pl)
    pl_trainer = pl.Trainer(**flags)
    pl_trainer.fit(ref, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    assert (ref.estimated, pl_trainer.global_step) == (model.estimated, trainer.global_step)


# ---------------------------------------------------------------------------------------------- training_step -> None
def _skipping_module(L, cfg, skip):
    class Skipping(_module_class(L)):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx in skip else loss

    return Skipping(cfg)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("acc", [1, 2])
def test_training_step_none_skips_the_batch(opt, acc):
    # acc 2 over 7 batches: windows [0,1] [2,3] [4,5] [6]; None at 2 opens a window, at 5 closes one, and
    # with acc 1 both batches are skipped outright
    skip = {2, 5}
    cfg = dict(opt=opt, acc=acc)
    with pytest.warns(UserWarning, match="returned `None`"):
        model, trainer = _fit(featherlight, cfg, module=_skipping_module(featherlight, cfg, skip))
    net, ref_opt, _, steps = _raw(cfg, skip=skip)
    _assert_same_weights(model.net, net)
    _assert_same_optimizer_state(trainer.optimizers[0], ref_opt)
    assert trainer.global_step == steps  # the optimizer step is still taken (on no gradients) and counted
    pl = _lightning_or_none()
    if pl is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`training_step` returned `None`")
            pl_model, pl_trainer = _fit(pl, cfg, module=_skipping_module(pl, cfg, skip))
        _assert_same_weights(pl_model.net, net)
        assert pl_trainer.global_step == trainer.global_step


def test_training_step_none_skips_update_weights_unchanged():
    """With plain SGD (no momentum) a batch returning None leaves every weight exactly as it was."""
    snapshots = []

    class M(featherlight.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            return None if batch_idx == 1 else loss

        def on_train_batch_start(self, batch, batch_idx):
            snapshots.append([p.detach().clone() for p in self.parameters()])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    model = M()
    with pytest.warns(UserWarning, match="returned `None`"):
        featherlight.Trainer(**dict(FLAGS, max_epochs=1, limit_train_batches=3)).fit(
            model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    before_1, before_2 = snapshots[1], snapshots[2]
    assert all(torch.equal(a, b) for a, b in zip(before_1, before_2))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], before_1))


# ---------------------------------------------------------------------------------------------- gradients the hooks see
def _grads(params):
    return [p.grad.detach().clone() for p in params]


@pytest.mark.parametrize("algorithm,value", [("norm", 0.05), ("value", 0.01)])
def test_hooks_see_the_expected_gradients(algorithm, value):
    acc = 3
    seen = {"after_backward": [], "before_optimizer_step": [], "after_step": []}

    class M(_module_class(featherlight)):
        def on_after_backward(self):
            seen["after_backward"].append(_grads(self.parameters()))

        def on_before_optimizer_step(self, optimizer):
            seen["before_optimizer_step"].append((self.trainer.progress.batch_idx, _grads(self.parameters())))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if (batch_idx + 1) % acc == 0 or batch_idx == N_BATCHES - 1:
                seen["after_step"].append(_grads(self.parameters()))

    cfg = dict(opt="sgd", acc=acc, clip=(algorithm, value))
    model, trainer = _fit(featherlight, cfg, module=M(cfg), epochs=1)

    # the reference: gradients after each backward, the window's sum before clipping, and after clipping
    net = _net()
    opt = _optimizer(net.parameters(), cfg)
    expected = {"after_backward": [], "before_optimizer_step": [], "after_step": []}
    torch.manual_seed(RUN_SEED)
    for i, (x, y) in enumerate(_loader(cfg)):
        loss = F.mse_loss(net(x), y)
        if i % acc == 0:
            opt.zero_grad()
        (loss / acc).backward()
        expected["after_backward"].append(_grads(net.parameters()))
        if (i + 1) % acc == 0 or i == N_BATCHES - 1:
            expected["before_optimizer_step"].append((i, _grads(net.parameters())))
            if algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(list(net.parameters()), value)
            else:
                torch.nn.utils.clip_grad_value_(list(net.parameters()), value)
            expected["after_step"].append(_grads(net.parameters()))
            opt.step()

    assert len(seen["after_backward"]) == N_BATCHES
    assert [i for i, _ in seen["before_optimizer_step"]] == [2, 5, 6]  # accumulated windows, the last one short
    for key in seen:
        got = [g for _, g in seen[key]] if key == "before_optimizer_step" else seen[key]
        want = [g for _, g in expected[key]] if key == "before_optimizer_step" else expected[key]
        assert len(got) == len(want), key
        for j, (a, b) in enumerate(zip(got, want)):
            assert all(torch.equal(u, v) for u, v in zip(a, b)), (key, j)
    # on_before_optimizer_step saw the unclipped gradients, and the clipping really bit
    for (_, before), after in zip(seen["before_optimizer_step"], seen["after_step"]):
        if algorithm == "norm":
            assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before])) > value
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in after]))
            assert total == pytest.approx(value, rel=1e-4)
        else:
            assert max(g.abs().max() for g in before) > value
            assert max(g.abs().max() for g in after) <= value
    # the accumulated gradient in on_before_optimizer_step is the sum of the window's backward passes
    first_window = seen["before_optimizer_step"][0][1]
    assert all(torch.equal(a, b) for a, b in zip(first_window, seen["after_backward"][2]))
    _assert_same_weights(model.net, net)


# ---------------------------------------------------------------------------------------------- manual optimization
def _manual_module(L):
    class Manual(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            torch.manual_seed(0)
            self.a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1))
            self.b = nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            sched_a, sched_b = self.lr_schedulers()
            x, y = batch

            self.toggle_optimizer(opt_a)
            loss_a = F.mse_loss(self.b(self.a(x)), y)
            self.manual_backward(loss_a)
            opt_a.step()
            opt_a.zero_grad()
            self.untoggle_optimizer(opt_a)

            self.toggle_optimizer(opt_b)
            loss_b = F.mse_loss(self.b(self.a(x)), y) * 0.5
            self.manual_backward(loss_b)
            if (batch_idx + 1) % 2 == 0 or self.trainer.is_last_batch:  # b accumulates over two batches
                opt_b.step()
                opt_b.zero_grad()
            self.untoggle_optimizer(opt_b)

            sched_a.step()
            if self.trainer.is_last_batch:
                sched_b.step()
            return loss_a

        def configure_optimizers(self):
            opt_a = torch.optim.Adam(self.a.parameters(), lr=0.01)
            opt_b = torch.optim.SGD(self.b.parameters(), lr=0.05, momentum=0.9)
            return ([opt_a, opt_b], [torch.optim.lr_scheduler.ExponentialLR(opt_a, 0.9),
                                     torch.optim.lr_scheduler.StepLR(opt_b, 1, gamma=0.5)])

    return Manual()


def _raw_manual():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1))
    b = nn.Linear(16, 1)
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    sched_a = torch.optim.lr_scheduler.ExponentialLR(opt_a, 0.9)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 1, gamma=0.5)
    loader = _loader(dict(shuffle="global"))
    torch.manual_seed(RUN_SEED)
    steps = 0
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(loader):
            last = i == len(loader) - 1
            b.requires_grad_(False)
            F.mse_loss(b(a(x)), y).backward()
            opt_a.step()
            opt_a.zero_grad()
            steps += 1
            b.requires_grad_(True)

            a.requires_grad_(False)
            (F.mse_loss(b(a(x)), y) * 0.5).backward()
            if (i + 1) % 2 == 0 or last:
                opt_b.step()
                opt_b.zero_grad()
                steps += 1
            a.requires_grad_(True)
            sched_a.step()
            if last:
                sched_b.step()
    return a, b, opt_a, opt_b, steps


@pytest.mark.parametrize("L_name", ["featherlight", "lightning"])
def test_manual_optimization_two_optimizers(L_name):
    L = featherlight if L_name == "featherlight" else _lightning()
    model = _manual_module(L)
    trainer = L.Trainer(**dict(FLAGS, max_epochs=EPOCHS))
    torch.manual_seed(RUN_SEED)
    trainer.fit(model, _loader(dict(shuffle="global")))
    a, b, opt_a, opt_b, steps = _raw_manual()
    _assert_same_weights(model.a, a)
    _assert_same_weights(model.b, b)
    _assert_same_optimizer_state(trainer.optimizers[0], opt_a)
    _assert_same_optimizer_state(trainer.optimizers[1], opt_b)
    assert trainer.global_step == steps  # every step of every optimizer counts
    assert all(p.requires_grad for p in model.parameters())  # untoggle restored everything


# ---------------------------------------------------------------------------------------------- LBFGS through optimizer_step
def _lbfgs_module(L, calls):
    class LBFGSModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            calls.append(batch_idx)
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4, history_size=5)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            # a user warm-up, as in Lightning's docs, then the closure-driven step
            if self.trainer.global_step < 3:
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * (self.trainer.global_step + 1) / 3
            optimizer.step(closure=optimizer_closure)

    return LBFGSModule()


def _raw_lbfgs():
    net = _net()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4, history_size=5)
    calls, steps = [], 0
    torch.manual_seed(RUN_SEED)
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(_loader({})):
            if steps < 3:
                for group in opt.param_groups:
                    group["lr"] = 0.5 * (steps + 1) / 3

            def closure():
                calls.append(i)
                loss = F.mse_loss(net(x), y)
                opt.zero_grad()
                loss.backward()
                return loss

            opt.step(closure)
            steps += 1
    return net, calls, steps


@pytest.mark.parametrize("L_name", ["featherlight", "lightning"])
def test_lbfgs_closure_in_optimizer_step(L_name):
    L = featherlight if L_name == "featherlight" else _lightning()
    calls = []
    model = _lbfgs_module(L, calls)
    trainer = L.Trainer(**dict(FLAGS, max_epochs=EPOCHS))
    torch.manual_seed(RUN_SEED)
    trainer.fit(model, _loader({}))
    net, raw_calls, steps = _raw_lbfgs()
    assert calls == raw_calls and len(calls) > steps  # LBFGS re-evaluated the closure several times per batch
    _assert_same_weights(model.net, net)
    assert trainer.global_step == steps


def test_optimizer_step_that_skips_the_closure_raises():
    class M(_module_class(featherlight)):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            pass  # forgot optimizer.step(closure=optimizer_closure)

    with pytest.raises(MisconfigurationException, match="closure wasn't executed"):
        _fit(featherlight, {}, module=M({}), epochs=1)


# ---------------------------------------------------------------------------------------------- ReduceLROnPlateau
def _plateau_module(L, monitor="train_metric", strict=True, interval="epoch", frequency=1):
    class Plateau(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()
            self.stepped = []  # (epoch, batch_idx, metric passed to the scheduler, lr after)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            # epoch 0 logs 1, 2, ... per batch (mean 4.0); epoch 1 logs the same: a plateau at epoch 1's end
            self.log("train_metric", float(batch_idx + 1), on_step=interval == "step", on_epoch=interval == "epoch")
            return loss

        def lr_scheduler_step(self, scheduler, metric):
            super().lr_scheduler_step(scheduler, metric)
            self.stepped.append((self.current_epoch, self.trainer.fit_loop.epoch_loop.batch_idx
                                 if hasattr(self.trainer, "fit_loop") else self.trainer.progress.batch_idx,
                                 None if metric is None else float(metric), scheduler.optimizer.param_groups[0]["lr"]))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor, "strict": strict,
                                                       "interval": interval, "frequency": frequency}}

    return Plateau()


def _fit_plateau(L, **kwargs):
    model = _plateau_module(L, **kwargs)
    trainer = L.Trainer(**dict(FLAGS, max_epochs=EPOCHS))
    trainer.fit(model, DataLoader(_dataset(), batch_size=BATCH_SIZE))
    return model, trainer


def test_reduce_on_plateau_steps_at_epoch_end_with_the_metric():
    model, trainer = _fit_plateau(featherlight)
    sizes = [min(BATCH_SIZE, N_SAMPLES - i * BATCH_SIZE) for i in range(N_BATCHES)]
    mean = sum((i + 1) * n for i, n in enumerate(sizes)) / N_SAMPLES  # weighted by batch size (the last is short)
    # once per epoch, after the last batch, with the epoch-mean of the logged metric; epoch 1 did not improve
    assert [(e, i, lr) for e, i, _, lr in model.stepped] == [(0, N_BATCHES - 1, 0.1), (1, N_BATCHES - 1, 0.05)]
    assert [m for _, _, m, _ in model.stepped] == [pytest.approx(mean, rel=1e-6)] * 2
    pl = _lightning_or_none()
    if pl is not None:
        ref, _ = _fit_plateau(pl)
        assert ref.stepped == model.stepped


def test_reduce_on_plateau_step_interval_with_frequency():
    model, trainer = _fit_plateau(featherlight, monitor="train_metric", interval="step", frequency=2)
    # every second batch (batch_idx within the epoch), with the value logged on that batch
    metrics = [m for _, _, m, _ in model.stepped]
    assert [(e, i) for e, i, _, _ in model.stepped] == [(e, i) for e in range(EPOCHS) for i in (1, 3, 5)]
    assert metrics == [2.0, 4.0, 6.0] * EPOCHS
    pl = _lightning_or_none()
    if pl is not None:
        ref, _ = _fit_plateau(pl, monitor="train_metric", interval="step", frequency=2)
        assert ref.stepped == model.stepped


def test_reduce_on_plateau_missing_monitor_strict_names_available_metrics():
    with pytest.raises(MisconfigurationException) as err:
        _fit_plateau(featherlight, monitor="missing")
    message = str(err.value)
    assert "missing" in message and "['train_metric']" in message
    pl = _lightning_or_none()
    if pl is not None:
        with pytest.raises(Exception) as pl_err:
            _fit_plateau(pl, monitor="missing")
        assert type(pl_err.value).__name__ == "MisconfigurationException"
        assert message == str(pl_err.value)  # word for word


def test_reduce_on_plateau_missing_monitor_not_strict_warns_and_skips():
    with pytest.warns(RuntimeWarning, match="missing which is not available but strict is set to `False`"):
        model, trainer = _fit_plateau(featherlight, monitor="missing", strict=False)
    assert model.stepped == []
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1
