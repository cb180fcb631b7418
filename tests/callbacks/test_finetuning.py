import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import BackboneFinetuning, BaseFinetuning, Callback
from featherlight.utilities.exceptions import MisconfigurationException

# BatchNorm parameters stay trainable (train_bn=True), so they are in the optimizer already when the backbone joins
pytestmark = pytest.mark.filterwarnings("ignore:.*already (in a param group|exist within another group).*")


def make_module(base):
    class WithBackbone(base):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(self.backbone(x))

        def training_step(self, batch, batch_idx):
            return self(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]

    return WithBackbone


def loader():
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)


def make_recorder(base):
    class Recorder(base):
        """Runs after the finetuning callback: records the optimizer's groups at each epoch start."""

        def __init__(self):
            self.epochs = []

        def on_train_epoch_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            self.epochs.append((
                [round(g["lr"], 12) for g in optimizer.param_groups],
                [len(g["params"]) for g in optimizer.param_groups],
                sorted(n for n, p in pl_module.backbone.named_parameters() if p.requires_grad),
            ))

    return Recorder()


FINETUNING_KWARGS = dict(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=0.1, lambda_func=lambda e: 3.0,
                         should_align=True, verbose=True)


def run_ours(max_epochs=6, **kwargs):
    finetuning = BackboneFinetuning(**{**FINETUNING_KWARGS, **kwargs})
    recorder = make_recorder(Callback)
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[finetuning, recorder], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(make_module(L.LightningModule)(), loader())
    return finetuning, recorder, trainer


def test_backbone_is_unfrozen_and_its_lr_grows_until_aligned():
    finetuning, recorder, _ = run_ours()
    lrs = [e[0] for e in recorder.epochs]
    trainable = [e[2] for e in recorder.epochs]
    # frozen backbone except BatchNorm (train_bn=True), a single param group
    assert lrs[0] == [0.1] and lrs[1] == [0.07]
    assert trainable[0] == trainable[1] == ["1.bias", "1.weight"]
    # epoch 2: the backbone joins with 10% of the current lr; later epochs multiply by 3, capped at the lr
    assert lrs[2] == [0.049, round(0.049 * 0.1, 12)]
    assert lrs[3] == [0.0343, round(0.0049 * 3, 12)]
    assert lrs[4] == [0.02401, 0.02401]  # 0.0147 * 3 > 0.02401: aligned
    assert trainable[2] == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]
    assert [e[1] for e in recorder.epochs][2] == [4, 4]  # the BatchNorm params are already in group 0
    state = finetuning.state_dict()
    assert state["previous_backbone_lr"] == pytest.approx(lrs[-1][1])
    groups = state["internal_optimizer_metadata"][0]
    assert groups[1]["params"] == ["backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias"]


def test_matches_lightning():
    pl = pytest.importorskip("lightning.pytorch")
    _, ours, _ = run_ours()
    theirs = make_recorder(pl.Callback)
    trainer = pl.Trainer(max_epochs=6, callbacks=[pl.callbacks.BackboneFinetuning(**FINETUNING_KWARGS), theirs],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(make_module(pl.LightningModule)(), loader())
    assert ours.epochs == theirs.epochs


def test_resume_restores_the_added_param_groups(tmp_path):
    path = tmp_path / "ft.ckpt"

    class SaveAtEpochEnd(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 3:
                trainer.save_checkpoint(path)
                assert len(trainer.optimizers[0].param_groups) == 2

    trainer = L.Trainer(max_epochs=4, callbacks=[BackboneFinetuning(**FINETUNING_KWARGS), SaveAtEpochEnd()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(make_module(L.LightningModule)(), loader())

    finetuning = BackboneFinetuning(**FINETUNING_KWARGS)
    recorder = make_recorder(Callback)
    trainer = L.Trainer(max_epochs=6, callbacks=[finetuning, recorder], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(make_module(L.LightningModule)(), loader(), ckpt_path=path)
    _, uninterrupted, _ = run_ours()
    # same learning rates (loaded with the optimizer state) and the backbone trains again after the resume
    # (Lightning restores the groups but leaves the backbone's requires_grad=False from `freeze_before_training`)
    assert recorder.epochs == uninterrupted.epochs[4:]
    assert finetuning.state_dict()["previous_backbone_lr"] == pytest.approx(0.016807)
    assert all(p.requires_grad for p in trainer.lightning_module.backbone.parameters())
    assert trainer.lightning_module.backbone[1].track_running_stats


def test_missing_backbone():
    class NoBackbone(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=1, callbacks=[BackboneFinetuning()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(MisconfigurationException, match="backbone"):
        trainer.fit(NoBackbone(), loader())


def test_custom_finetuning_subclass():
    class Unfreeze(BaseFinetuning):
        def freeze_before_training(self, pl_module):
            self.freeze(pl_module.backbone, train_bn=False)

        def finetune_function(self, pl_module, epoch, optimizer):
            if epoch == 1:
                self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, train_bn=True)

    recorder = make_recorder(Callback)
    trainer = L.Trainer(max_epochs=2, callbacks=[Unfreeze(), recorder], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(make_module(L.LightningModule)(), loader())
    assert recorder.epochs[0][1] == [2] and recorder.epochs[0][2] == []
    # lr=None: the new group gets the first group's lr / initial_denom_lr; BatchNorm included
    assert recorder.epochs[1][0] == [0.07, 0.007] and recorder.epochs[1][1] == [2, 6]


def test_base_methods_must_be_overridden():
    with pytest.raises(NotImplementedError):
        BaseFinetuning().freeze_before_training(None)
    with pytest.raises(NotImplementedError):
        BaseFinetuning().finetune_function(None, 0, None)


# ---------------------------------------------------------------------------------------------- helpers
def test_flatten_and_freeze_helpers():
    model = nn.ModuleDict({
        "a": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
        "b": nn.ModuleList([nn.Conv1d(1, 1, 1), nn.Sequential(nn.ReLU())]),
    })
    flat = BaseFinetuning.flatten_modules(model)
    assert [type(m).__name__ for m in flat] == ["Linear", "BatchNorm1d", "Conv1d", "ReLU"]
    assert BaseFinetuning.flatten_modules([model["a"], [model["b"][0]]]) == flat[:3]

    BaseFinetuning.freeze(model, train_bn=True)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, False, False]
    bn = model["a"][1]
    assert bn.track_running_stats
    BaseFinetuning.freeze(model, train_bn=False)
    assert not any(p.requires_grad for p in model.parameters()) and not bn.track_running_stats
    assert list(BaseFinetuning.filter_params(model, requires_grad=True)) == []
    assert len(list(BaseFinetuning.filter_params(model, train_bn=False, requires_grad=False))) == 4

    BaseFinetuning.make_trainable(model["a"])
    assert bn.track_running_stats and all(p.requires_grad for p in model["a"].parameters())
    BaseFinetuning.freeze_module(model["a"][0])
    assert not model["a"][0].weight.requires_grad and bn.weight.requires_grad


def test_filter_on_optimizer_is_by_identity():
    kept = nn.Linear(2, 2)
    other = nn.Linear(2, 2)
    nn.init.zeros_(kept.bias)
    nn.init.zeros_(other.bias)  # equal values, different parameters
    optimizer = torch.optim.SGD(kept.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="^The provided params to be frozen already exist within another group"):
        out = BaseFinetuning.filter_on_optimizer(optimizer, [kept.weight, other.weight, other.bias])
    assert out == [other.weight, other.bias]  # Lightning's torch.equal check would also drop other.bias
    BaseFinetuning.unfreeze_and_add_param_group(other, optimizer, lr=0.5)
    assert optimizer.param_groups[1]["lr"] == 0.5 and len(optimizer.param_groups[1]["params"]) == 2
