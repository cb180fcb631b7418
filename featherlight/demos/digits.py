"""A real training job in one command: handwritten digits (8x8 images shipped with scikit-learn).

    python -m featherlight.demos.digits [--max-epochs 15] [--root featherlight_demo_runs]

Trains a small CNN with validation, a progress bar, a CSV log and checkpoints (best by validation
accuracy, plus last), tests the best checkpoint, and prints where everything went. No download:
the data set is part of scikit-learn (``pip install scikit-learn``).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from featherlight.loggers import CSVLogger


class DigitsDataModule(L.LightningDataModule):
    """1,797 grey 8x8 digit images split 70/15/15 into train/val/test with a fixed seed."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        _load_digits()  # fails early, with the fix, if scikit-learn is missing

    def setup(self, stage: str) -> None:
        images, labels = _load_digits()
        full = TensorDataset(images, labels)
        n = len(full)
        n_val = n_test = int(0.15 * n)
        self.train_set, self.val_set, self.test_set = random_split(
            full, [n - n_val - n_test, n_val, n_test], generator=torch.Generator().manual_seed(self.hparams.seed)
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "The digits demo needs scikit-learn for its bundled data set: pip install scikit-learn "
            "(or pip install -e '.[demo]')."
        ) from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    return images, torch.tensor(data.target, dtype=torch.long)


class DigitsCNN(L.LightningModule):
    """Two conv layers and a linear classifier; about 20k parameters."""

    def __init__(self, lr: float = 3e-3, channels: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels * 16, 10),
        )
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train")
        self.log(f"{stage}_acc", acc, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _plot(logger: CSVLogger) -> str:
    """The PNG of the run's curves, or how to get one."""
    try:
        return logger.plot()
    except ModuleNotFoundError:
        return f"pip install matplotlib, then: python -m featherlight.plot {logger.log_dir}"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--root", default="featherlight_demo_runs", help="where logs and checkpoints go")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, workers=True)
    datamodule = DigitsDataModule()
    model = DigitsCNN()
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", save_last=True, filename="{epoch}-{val_acc:.3f}")
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        default_root_dir=args.root,
        logger=CSVLogger(args.root),
        callbacks=[checkpoint],
        deterministic=True,
        log_every_n_steps=5,
    )
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(ckpt_path="best", datamodule=datamodule)
    log_dir = trainer.log_dir
    print()
    print(f"Best validation accuracy {float(checkpoint.best_model_score):.3f}; test accuracy "
          f"{results[0]['test_acc']:.3f} (best checkpoint).")
    print(f"  metrics:      {os.path.join(log_dir, 'metrics.csv')}")
    print(f"  hparams:      {os.path.join(log_dir, 'hparams.yaml')}")
    print(f"  best ckpt:    {checkpoint.best_model_path}")
    print(f"  last ckpt:    {checkpoint.last_model_path}")
    print(f"  curves:       {_plot(trainer.logger)}")
    print(f"Reload it with: DigitsCNN.load_from_checkpoint({checkpoint.best_model_path!r})")
    return {"test": results[0], "best_model_path": checkpoint.best_model_path, "log_dir": log_dir}


if __name__ == "__main__":
    main()
