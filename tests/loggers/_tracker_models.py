"""A tiny model and data shared by the tracker-logger tests (MLflow, W&B, Comet, Neptune)."""

import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L


class TinyModel(L.LightningModule):
    """Linear regression on 64 fixed points; logs ``train_loss`` every step and ``val_loss`` per epoch.

    ``fail_at_step`` raises ``RuntimeError`` (or ``KeyboardInterrupt`` with ``interrupt=True``) in that training step.
    """

    def __init__(self, lr: float = 0.1, nested: dict = None, fail_at_step: int = -1, interrupt: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            if self.hparams.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError("boom")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return _loader()

    def val_dataloader(self):
        return _loader()


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def trainer(logger, tmp_path, **kwargs):
    """A quiet CPU trainer: 2 epochs of 4 steps, logging every step."""
    options = dict(
        max_epochs=2,
        logger=logger,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return L.Trainer(**options)
