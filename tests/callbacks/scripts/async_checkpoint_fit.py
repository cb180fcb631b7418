"""A fit whose checkpoints are written in the background, for tests that kill it mid-write.

    python async_checkpoint_fit.py OUTDIR MODE STALL

MODE: ``async_save`` (``ModelCheckpoint(async_save=True)``) or ``plugin`` (``Trainer(plugins=[AsyncCheckpointIO()])``).
STALL: the name of a file (e.g. ``last.ckpt``) whose second write stops half-way: the writer creates
``OUTDIR/stalled`` and sleeps, so the test can kill the process while the write is in progress.

The tests import this module for the same model, data and trainer flags.
"""
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import featherlight as fl
from featherlight.callbacks import ModelCheckpoint
from featherlight.io.atomic import atomic_write
from featherlight.plugins import AsyncCheckpointIO, TorchCheckpointIO

MAX_STEPS = 8
EVERY = 2


class Net(fl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(64, 16, generator=g), torch.randn(64, 1, generator=g))
        return DataLoader(data, batch_size=4, shuffle=True)


def trainer(ckpt_dir, mode="async_save", plugins=(), **kwargs):
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=EVERY, save_top_k=1, save_last=True,
                                 async_save=mode == "async_save")
    if mode == "plugin":
        plugins = [AsyncCheckpointIO(*plugins)]
    flags = dict(max_steps=MAX_STEPS, limit_val_batches=0, logger=False, enable_progress_bar=False,
                 enable_model_summary=False, callbacks=[checkpoint], plugins=list(plugins))
    flags.update(kwargs)
    return fl.Trainer(**flags)


class _Stalling:
    """A file wrapper that stops after the first megabyte-or-so: marks the stall, then sleeps until killed."""

    def __init__(self, f, marker):
        self.f, self.marker, self.written = f, marker, 0

    def write(self, data):
        n = self.f.write(data)
        self.written += n
        if self.written > 1024:
            self.f.flush()
            open(self.marker, "w").close()
            time.sleep(3600)
        return n

    def flush(self):
        self.f.flush()


class StallingIO(TorchCheckpointIO):
    """Writes like the default plugin, except that the second write of ``stall`` stops half-way."""

    def __init__(self, stall, marker):
        self.stall, self.marker, self.count = stall, marker, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if os.path.basename(os.fspath(path)).startswith(self.stall):
            self.count += 1
            if self.count == 2:
                atomic_write(path, lambda f: torch.save(checkpoint, _Stalling(f, self.marker)))
                return
        super().save_checkpoint(checkpoint, path, storage_options)


if __name__ == "__main__":
    out, mode, stall = sys.argv[1], sys.argv[2], sys.argv[3]
    fl.seed_everything(0)
    io = StallingIO(stall, os.path.join(out, "stalled"))
    trainer(os.path.join(out, "ckpts"), mode, plugins=[io]).fit(Net())
    print("fit returned")  # only when the stall never happened
