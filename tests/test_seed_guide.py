"""Every code block of the seed guide (../shared/seed/best_practices.zh.md) that needs no GPU or DDP,
run on featherlight after replacing `lightning` with `featherlight`."""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import featherlight as L
from featherlight.utilities.exceptions import MisconfigurationException


def _data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 100, generator=g)
    return TensorDataset(x, (x.sum(1) > 0).long())


class MyDataModule(L.LightningDataModule):
    """Block 2 (good): the data lives in a DataModule."""

    def __init__(self, batch_size=16, num_workers=0):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers

    def prepare_data(self):
        pass  # downloads would go here

    def setup(self, stage):
        full = _data()
        self.train_set, self.val_set = random_split(full, [96, 32], generator=torch.Generator().manual_seed(0))
        self.test_set = _data(32, seed=1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)


class Encoder(nn.Module):
    def __init__(self, hidden_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(100, hidden_dim), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class MyModel(L.LightningModule):
    """Blocks "save_hyperparameters", "modular model" (4), "self.device", "register_buffer", logging, stability."""

    def __init__(self, learning_rate: float = 1e-2, hidden_dim: int = 16, dropout: float = 0.1,
                 weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()  # Saves all arguments
        self.encoder = Encoder(self.hparams.hidden_dim)
        self.dropout = nn.Dropout(self.hparams.dropout)
        self.head = nn.Linear(self.hparams.hidden_dim, 2)
        self.register_buffer("running_mean", torch.zeros(100))
        self.custom_data = {"seen": 0}
        self.metrics = []

    @property
    def learning_rate(self) -> float:
        """Current learning rate."""
        return self.hparams.learning_rate

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x):
        return self.head(self.dropout(self.encoder(x - self.running_mean)))

    def compute_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        noise = torch.randn(x.size(0), 100).to(self.device) * 0  # tensors on the right device
        noise = torch.randn(x.size(0), 100).type_as(x) * 0
        loss = self.compute_loss((x + noise, y))
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/loss", loss)
        self.custom_data["seen"] += 1
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("val_loss", loss, sync_dist=True)
        self.log("val/loss", loss)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.compute_loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate,
                                weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng_state"] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        checkpoint["custom_data"] = self.custom_data
        checkpoint["epoch_metrics"] = self.metrics

    def on_load_checkpoint(self, checkpoint):
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"]["torch"])
            np.random.set_state(checkpoint["rng_state"]["numpy"])
            random.setstate(checkpoint["rng_state"]["python"])
        self.custom_data = checkpoint.get("custom_data", {})
        self.metrics = checkpoint.get("epoch_metrics", [])


def quiet(**kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    return L.Trainer(**kwargs)


def test_code_organisation_multi_gpu_ddp_flags_fail_clearly_without_gpus():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(MisconfigurationException, match="accelerator='gpu'"):
        L.Trainer(max_epochs=100, accelerator="gpu", devices=4, strategy="ddp")


def test_datamodule_device_agnostic_buffers_and_hparams(tmp_path):
    L.seed_everything(42, workers=True)
    dm = MyDataModule()
    model = MyModel(learning_rate=1e-2, hidden_dim=16, dropout=0.1)
    trainer = quiet(max_epochs=2, default_root_dir=tmp_path, deterministic=True, benchmark=False)
    trainer.fit(model, datamodule=dm)
    assert model.running_mean.device == model.device
    assert model.hparams.hidden_dim == 16 and model.learning_rate == 1e-2 and model.num_parameters > 0
    ckpt = trainer.checkpoint_callback.best_model_path
    assert os.path.isfile(ckpt)
    loaded = MyModel.load_from_checkpoint(ckpt)  # rng_state holds NumPy arrays: loads with weights_only
    assert loaded.hparams.learning_rate == 1e-2  # Original value preserved
    assert loaded.custom_data == model.custom_data
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert os.path.isfile(os.path.join(trainer.log_dir, "hparams.yaml"))
    assert {"train_loss", "train_loss_step", "train_loss_epoch", "train/loss", "val_loss", "val/loss"} <= set(
        trainer.callback_metrics)
    test = trainer.test(model, datamodule=dm, verbose=False)
    assert "test_loss" in test[0]
    assert "test_loss" in trainer.callback_metrics and "train_loss" not in trainer.callback_metrics  # a new run


def test_ignore_specific_arguments():
    class WithModel(L.LightningModule):
        def __init__(self, lr, model, dataset):
            super().__init__()
            self.save_hyperparameters(ignore=["model", "dataset"])
            self.model = model
            self.dataset = dataset

    m = WithModel(0.1, nn.Linear(1, 1), _data(4))
    assert dict(m.hparams) == {"lr": 0.1}


def test_learning_rate_monitor_and_structured_logging(tmp_path):
    from featherlight.callbacks import LearningRateMonitor

    trainer = quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[LearningRateMonitor(logging_interval="step")],
                    log_every_n_steps=1, logger=L.loggers.CSVLogger(tmp_path))
    trainer.fit(MyModel(), datamodule=MyDataModule())
    header = open(os.path.join(trainer.log_dir, "metrics.csv")).readline().strip().split(",")
    assert "lr-Adam" in header and "train/loss" in header


def test_reproducibility_two_seeded_runs_are_identical(tmp_path):
    def run():
        L.seed_everything(42, workers=True)
        model = MyModel()
        quiet(max_epochs=2, deterministic=True, benchmark=False, logger=False, enable_checkpointing=False).fit(
            model, datamodule=MyDataModule(num_workers=2))
        return model.state_dict()

    torch.use_deterministic_algorithms(True)
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags", [
    {"fast_dev_run": True},
    {"limit_train_batches": 0.1, "limit_val_batches": 0.1},
    {"detect_anomaly": True},
    {"overfit_batches": 2},
    {"profiler": "simple"},
    {"profiler": "advanced"},
    {"precision": "bf16-mixed"},
    {"accumulate_grad_batches": 4},
    {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "norm"},
    {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"},
    {"benchmark": True},
])
def test_debugging_memory_and_stability_flags(flags, tmp_path):
    trainer = quiet(max_epochs=1, default_root_dir=tmp_path, **flags)
    trainer.fit(MyModel(), datamodule=MyDataModule(batch_size=2 if "limit_val_batches" in flags else 16))
    assert trainer.global_step > 0


def test_16_mixed_on_cpu_falls_back_to_bf16_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer = quiet(max_epochs=1, precision="16-mixed", default_root_dir=tmp_path, accelerator="cpu")
    assert trainer.precision == "bf16-mixed"
    trainer.fit(MyModel(), datamodule=MyDataModule())


def test_gradient_checkpointing_and_clearing_outputs(tmp_path):
    class Checkpointed(MyModel):
        def __init__(self):
            super().__init__()
            self.training_step_outputs = []

        def forward(self, x):
            h = torch.utils.checkpoint.checkpoint(self.encoder, x - self.running_mean, use_reentrant=False)
            return self.head(h)

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.training_step_outputs.append(loss.detach())
            return loss

        def on_train_epoch_end(self):
            self.training_step_outputs.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    model = Checkpointed()
    quiet(max_epochs=1, default_root_dir=tmp_path).fit(model, datamodule=MyDataModule())
    assert model.training_step_outputs == []


def test_bfloat16_submodule_with_bf16_true(tmp_path):
    class BF16(MyModel):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder(16).to(torch.bfloat16)

    trainer = quiet(max_epochs=1, precision="bf16-true", default_root_dir=tmp_path)
    trainer.fit(BF16(), datamodule=MyDataModule())
    assert trainer.precision == "bf16-true"


def test_warmup_with_one_cycle_and_grad_norm_logging(tmp_path):
    class Warmup(MyModel):
        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=1e-2, total_steps=self.trainer.estimated_stepping_batches, pct_start=0.1)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def on_after_backward(self):
            for name, param in self.named_parameters():
                if param.grad is not None:
                    self.log(f"grad_norm/{name}", param.grad.norm())

    trainer = quiet(max_epochs=3, default_root_dir=tmp_path, accumulate_grad_batches=2)
    trainer.fit(Warmup(), datamodule=MyDataModule())  # runs OneCycleLR to its last step without an error
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == sched.total_steps == trainer.global_step
    assert "grad_norm/head.weight" in trainer.callback_metrics


def test_early_stopping_checkpointing_resume_and_best_model_testing(tmp_path):
    from featherlight.callbacks import EarlyStopping, ModelCheckpoint

    early_stop = EarlyStopping(monitor="val_loss", patience=10, mode="min", verbose=True)
    checkpoint_callback = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="{epoch}-{val_loss:.2f}",
                                          monitor="val_loss", mode="min", save_top_k=3, save_last=True)
    dm = MyDataModule()
    trainer = quiet(max_epochs=4, callbacks=[early_stop, checkpoint_callback], default_root_dir=tmp_path)
    trainer.fit(MyModel(), datamodule=dm)
    files = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "last.ckpt" in files and len(files) == 4
    assert all(f.startswith("epoch=") for f in files if f != "last.ckpt")

    # Resume from last checkpoint, and from a specific one
    resumed = quiet(max_epochs=6, callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
                    default_root_dir=tmp_path)
    resumed.fit(MyModel(), datamodule=dm, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed.current_epoch == 6 and resumed.global_step == 6 * 6
    specific = [f for f in files if f != "last.ckpt"][0]
    quiet(max_epochs=5, default_root_dir=tmp_path).fit(
        MyModel(), datamodule=dm, ckpt_path=str(tmp_path / "checkpoints" / specific))

    # Load best model and test only once
    best_model = MyModel.load_from_checkpoint(checkpoint_callback.best_model_path)
    result = trainer.test(best_model, datamodule=dm, verbose=False)
    assert "test_loss" in result[0]


def test_type_hints_and_docstrings_do_not_break_anything(tmp_path):
    from typing import Any, Dict, Tuple

    from torch import Tensor

    class Typed(MyModel):
        """My awesome model for image classification."""

        def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return self.compute_loss((x, y))

        def configure_optimizers(self) -> Dict[str, Any]:
            optimizer = torch.optim.Adam(self.parameters())
            return {"optimizer": optimizer}

    quiet(max_epochs=1, default_root_dir=tmp_path).fit(Typed(), datamodule=MyDataModule())


def test_pitfall_forgetting_to_return_the_loss_is_said_clearly(tmp_path):
    class Forgot(MyModel):
        def training_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            self.log("train_loss", loss)
            # FORGOT TO RETURN LOSS!

    model = Forgot()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="returned `None`"):
        quiet(max_epochs=1, default_root_dir=tmp_path).fit(model, datamodule=MyDataModule())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pitfall_in_place_batch_edit_and_manual_loss_list(tmp_path):
    class InPlace(MyModel):
        def __init__(self):
            super().__init__()
            self.training_losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            x = x * 1.0  # Create new tensor (the good way)
            loss = self.compute_loss((x, y))
            self.training_losses.append(loss.detach())
            return loss

    model = InPlace()
    quiet(max_epochs=1, default_root_dir=tmp_path).fit(model, datamodule=MyDataModule())
    assert len(model.training_losses) == 6


def test_performance_tips_workers_and_batch_size_finder(tmp_path):
    tuner_module = pytest.importorskip("featherlight.tuner")

    class Scalable(MyModel):
        pass

    dm = MyDataModule(batch_size=2, num_workers=2)
    trainer = quiet(max_epochs=1, default_root_dir=tmp_path, benchmark=True)
    tuner = tuner_module.Tuner(trainer)
    new_size = tuner.scale_batch_size(Scalable(), datamodule=dm, mode="power")
    assert new_size is not None and dm.batch_size == new_size <= 96
    trainer.fit(Scalable(), datamodule=dm)
