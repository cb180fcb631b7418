"""LightningModule behaviour outside and inside a Trainer."""
import copy
import pickle

import pytest
import torch

import featherlight as L
from featherlight.demos.boring_classes import BoringModel, ManualOptimBoringModel
from featherlight.utilities.exceptions import MisconfigurationException


def lean(**kwargs):
    base = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


def test_device_and_dtype_follow_to_calls():
    model = BoringModel()
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.double()
    assert model.dtype == torch.float64
    model.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_properties_without_a_trainer():
    model = BoringModel()
    assert model.current_epoch == 0 and model.global_step == 0 and model.logger is None
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        model.trainer
    with pytest.warns(UserWarning, match="reference is not registered on the model yet"):
        model.log("x", 1.0)


def test_pickle_and_deepcopy_drop_the_trainer():
    model = BoringModel()
    trainer = lean(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model)
    assert model._trainer is trainer
    assert pickle.loads(pickle.dumps(model))._trainer is None
    assert copy.deepcopy(model)._trainer is None


def test_log_rejects_non_scalar_and_unsupported_values():
    def fit_logging(value, **kw):
        class Model(BoringModel):
            def training_step(self, batch, batch_idx):
                self.log("x", value, **kw)
                return super().training_step(batch, batch_idx)

        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())

    with pytest.raises(ValueError, match=r"tensor must have a single element.*\.mean\(\)"):
        fit_logging(torch.ones(2))
    with pytest.raises(ValueError, match="`str` values cannot be logged"):
        fit_logging("high")
    with pytest.raises(MisconfigurationException, match="reduce_fx"):
        fit_logging(1.0, reduce_fx="median")
    with pytest.raises(MisconfigurationException, match="on_step=False, on_epoch=False"):
        fit_logging(1.0, on_step=False, on_epoch=False)


@pytest.mark.parametrize("hook", ["configure_optimizers", "on_fit_start", "on_train_end", "setup"])
def test_log_in_a_forbidden_hook_names_the_hook(hook):
    class Model(BoringModel):
        pass

    original = getattr(BoringModel, hook)

    def patched(self, *args, **kwargs):
        self.log("x", 1.0)
        return original(self, *args, **kwargs)

    setattr(Model, hook, patched)
    with pytest.raises(MisconfigurationException, match=f"inside `{hook}`"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_log_on_train_epoch_end_cannot_be_on_step():
    class Model(BoringModel):
        def on_train_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(MisconfigurationException, match="on_train_epoch_end"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_log_step_epoch_suffixes_reductions_and_batch_size_weighting():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("both", float(batch_idx), on_step=True, on_epoch=True)
            self.log("mx", float(batch_idx), on_step=False, on_epoch=True, reduce_fx="max")
            self.log("sm", 1.0, on_step=False, on_epoch=True, reduce_fx=torch.sum)
            self.log("weighted", float(batch_idx), on_step=False, on_epoch=True, batch_size=batch_idx + 1)
            return super().training_step(batch, batch_idx)

    trainer = lean(limit_train_batches=4, limit_val_batches=0)
    trainer.fit(Model())
    m = trainer.callback_metrics
    assert float(m["both_step"]) == 3.0 and float(m["both_epoch"]) == 1.5 and float(m["both"]) == 1.5
    assert float(m["mx"]) == 3.0 and float(m["sm"]) == 4.0
    # sum(i * (i + 1)) / sum(i + 1) for i in 0..3 = 20 / 10
    assert float(m["weighted"]) == pytest.approx(2.0)


def test_epoch_mean_uses_the_inferred_batch_size():
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch.shape[0]))

    loader = torch.utils.data.DataLoader(torch.randn(10, 32), batch_size=4)  # batches of 4, 4, 2
    out = lean().validate(Model(), loader, verbose=False)
    assert out[0]["v"] == pytest.approx((4 * 4 + 4 * 4 + 2 * 2) / 10)


def test_log_torchmetrics_metric_is_computed_over_the_epoch():
    torchmetrics = pytest.importorskip("torchmetrics")

    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.metric = torchmetrics.MeanMetric()

        def validation_step(self, batch, batch_idx):
            self.metric(torch.tensor(float(batch_idx)))
            self.log("metric", self.metric)

    model = Model()
    out = lean(limit_val_batches=4).validate(model, verbose=False)
    assert out[0]["metric"] == pytest.approx(1.5)
    out = lean(limit_val_batches=2).validate(model, verbose=False)  # reset between runs
    assert out[0]["metric"] == pytest.approx(0.5)


@pytest.mark.parametrize("flags", [{}, {"accumulate_grad_batches": 3, "gradient_clip_val": 0.5},
                                   {"gradient_clip_val": 0.1, "gradient_clip_algorithm": "value"}])
def test_log_no_host_sync_per_step(monkeypatch, flags):
    """`self.log`, accumulation and clipping never turn a tensor into a number during training."""
    import os
    import sys

    calls = []
    original = torch.Tensor.item
    package = os.path.dirname(L.__file__)

    def counting_item(self):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(package):  # the framework's own conversions (the DataLoader's seed draw is not)
            calls.append(caller)
        return original(self)

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("loss", super().training_step(batch, batch_idx)["loss"], prog_bar=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self, _orig=torch.Tensor.tolist: (
        calls.append("tolist") if sys._getframe(1).f_code.co_filename.startswith(package) else None) or _orig(self))
    trainer = lean(limit_train_batches=20, limit_val_batches=0, **flags)
    trainer.fit(Model())
    assert calls == []


def test_print_only_on_rank_zero(capsys):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.print("hello", batch_idx)
            return super().training_step(batch, batch_idx)

    lean(limit_train_batches=1, limit_val_batches=0).fit(Model())
    assert "hello 0" in capsys.readouterr().out


def test_freeze_unfreeze():
    model = BoringModel()
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_manual_optimization_several_optimizers_and_toggle():
    class GAN(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            g, d = self.optimizers()
            s1, s2 = self.lr_schedulers()
            self.toggle_optimizer(g)
            assert not any(p.requires_grad for p in self.other.parameters())
            loss = self(batch).sum()
            self.manual_backward(loss)
            g.step()
            g.zero_grad()
            self.untoggle_optimizer(g)
            assert all(p.requires_grad for p in self.other.parameters())
            loss = self.other(batch).sum()
            self.manual_backward(loss)
            d.step()
            d.zero_grad()
            s1.step()
            return loss

        def configure_optimizers(self):
            g = torch.optim.SGD(self.layer.parameters(), lr=0.1)
            d = torch.optim.SGD(self.other.parameters(), lr=0.1)
            return [g, d], [torch.optim.lr_scheduler.StepLR(g, 1), torch.optim.lr_scheduler.StepLR(d, 1)]

    trainer = lean(limit_train_batches=3, limit_val_batches=0)
    trainer.fit(GAN())
    assert trainer.global_step == 6  # every optimizer step counts
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # manual: stepped only by the user
    assert trainer.lr_scheduler_configs[1].scheduler.last_epoch == 0


def test_manual_backward_outside_manual_optimization_names_the_fix():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.manual_backward(self.step(batch))

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        lean(limit_train_batches=1, limit_val_batches=0).fit(Model())


def test_manual_boring_model_trains():
    model = ManualOptimBoringModel()
    before = model.layer.weight.detach().clone()
    trainer = lean(limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == 2 and not torch.equal(before, model.layer.weight)


def test_to_torchscript(tmp_path):
    model = BoringModel()
    script = model.to_torchscript(tmp_path / "m.pt")
    x = torch.randn(3, 32)
    assert torch.allclose(script(x), model(x))
    model.example_input_array = torch.randn(1, 32)
    traced = model.to_torchscript(method="trace")
    assert torch.allclose(traced(x), model(x))


def test_featherlight_pytorch_alias_is_the_same_module():
    import featherlight.pytorch as pl
    from featherlight.pytorch.callbacks import Callback
    from featherlight.pytorch.loggers import CSVLogger

    import featherlight.callbacks
    import featherlight.loggers

    assert pl.LightningModule is L.LightningModule and pl.Trainer is L.Trainer
    assert Callback is featherlight.callbacks.Callback and CSVLogger is featherlight.loggers.CSVLogger
    assert pl.callbacks is featherlight.callbacks


def test_checkpoint_hyper_params_constants(tmp_path):
    assert L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY == "hyper_parameters"
    assert L.LightningModule.CHECKPOINT_HYPER_PARAMS_NAME == "hparams_name"
    assert L.LightningModule.CHECKPOINT_HYPER_PARAMS_TYPE == "hparams_type"

    class Model(BoringModel):
        def __init__(self, width=3):
            super().__init__()
            self.save_hyperparameters()

    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Model(width=5))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert checkpoint[Model.CHECKPOINT_HYPER_PARAMS_KEY] == {"width": 5}  # the keys the checkpoint really uses
    lightning = pytest.importorskip("lightning.pytorch")
    for name in ("CHECKPOINT_HYPER_PARAMS_KEY", "CHECKPOINT_HYPER_PARAMS_NAME", "CHECKPOINT_HYPER_PARAMS_TYPE"):
        assert getattr(L.LightningModule, name) == getattr(lightning.LightningModule, name)
        assert getattr(L.LightningDataModule, name) == getattr(lightning.LightningDataModule, name)


# ---------------------------------------------------------------------------------------------- toggling optimizers
class _ThreeParts(L.LightningModule):
    """``shared`` belongs to no optimizer and carries the loss; ``a`` and ``b`` have one optimizer each."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.shared = torch.nn.Linear(4, 4)
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.bias.requires_grad = False  # frozen on purpose: must stay frozen
        self.seen = []

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        self.toggle_optimizer(opt_a)
        self.seen.append(("a", self.shared.weight.requires_grad, self.a.weight.requires_grad,
                          self.b.weight.requires_grad, self.b.bias.requires_grad))
        loss = self.shared(batch[0]).sum()  # only parameters of no optimizer: still trainable
        opt_a.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        self.untoggle_optimizer(opt_a)
        with self.toggled_optimizer(opt_b):
            self.seen.append(("b", self.shared.weight.requires_grad, self.a.weight.requires_grad,
                              self.b.weight.requires_grad, self.b.bias.requires_grad))
        self.seen.append(("after", self.shared.weight.requires_grad, self.a.weight.requires_grad,
                          self.b.weight.requires_grad, self.b.bias.requires_grad))

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 4)), batch_size=2)


def test_toggle_freezes_only_the_other_optimizers_parameters():
    model = _ThreeParts()
    lean().fit(model)
    assert model.seen == [
        ("a", True, True, False, False),  # parameters of no optimizer stay trainable (Lightning's rule)
        ("b", True, False, True, False),  # a frozen parameter of the toggled optimizer stays frozen
        ("after", True, True, True, False),
    ]


# ---------------------------------------------------------------------------------------------- clip_gradients
class _Clips(BoringModel):
    def __init__(self, **clip_kwargs):
        super().__init__()
        self.clip_kwargs = clip_kwargs
        self.norms = []

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, **self.clip_kwargs)
        self.norms.append(max(p.grad.abs().max().item() for p in self.parameters() if p.grad is not None))


def test_clip_gradients_takes_the_trainers_values_when_unset():
    model = _Clips(gradient_clip_algorithm="value")
    lean(max_steps=2, gradient_clip_val=1e-4).fit(model)
    assert model.norms and max(model.norms) <= 1e-4 + 1e-12


@pytest.mark.parametrize(("trainer_kwargs", "clip_kwargs", "message"), [
    (dict(gradient_clip_val=1e-4), dict(gradient_clip_val=1e-2),
     r"^You have set `Trainer\(gradient_clip_val=0.0001\)` and have passed `clip_gradients\(gradient_clip_val=0.01\)`"),
    (dict(gradient_clip_algorithm="norm"), dict(gradient_clip_algorithm="value"),
     r"^You have set `Trainer\(gradient_clip_algorithm='norm'\)` and have passed "
     r"`clip_gradients\(gradient_clip_algorithm='value'\)`"),
    (dict(), dict(gradient_clip_val=1.0, gradient_clip_algorithm="l3"), "`gradient_clip_algorithm` l3 is invalid"),
])
def test_clip_gradients_contradicting_the_trainer_is_an_error(trainer_kwargs, clip_kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        lean(max_steps=1, **trainer_kwargs).fit(_Clips(**clip_kwargs))


# ---------------------------------------------------------------------------------------------- LightningOptimizer
def test_lightning_optimizer_is_an_instance_of_the_wrapped_class():
    from featherlight.core.optimizer import LightningOptimizer

    model = BoringModel()
    optimizer = torch.optim.Adam(model.parameters())
    wrapped = LightningOptimizer(optimizer)
    assert isinstance(wrapped, LightningOptimizer) and isinstance(wrapped, torch.optim.Adam)
    assert type(wrapped).__name__ == "LightningAdam"
    assert type(LightningOptimizer(torch.optim.Adam(model.parameters()))) is type(wrapped)  # one class per class
    assert str(wrapped) == "Lightning" + str(optimizer)
    assert wrapped.param_groups is optimizer.param_groups and wrapped.state is optimizer.state
    assert wrapped.state_dict() == optimizer.state_dict()
    copied = copy.deepcopy(wrapped)
    assert type(copied).__name__ == "LightningAdam" and copied.optimizer is not optimizer
    assert type(pickle.loads(pickle.dumps(wrapped))).__name__ == "LightningAdam"

    trainer = lean(max_steps=1)
    trainer.fit(model)
    assert isinstance(model.optimizers(), torch.optim.SGD)
