"""Models, data and helpers shared by the distributed test scripts and the tests (single-process references)."""
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

import featherlight as L
from featherlight.callbacks import Callback

N_TRAIN, PER_RANK_BATCH = 32, 4
N_VAL = 5  # uneven across 2 ranks: 3 and 2 samples
N_PREDICT = 5
FLAGS = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


class IndexedData(Dataset):
    """Sample ``i`` is ``(i, x_i, y_i)`` with fixed random features."""

    def __init__(self, n, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.tensor(i), self.x[i], self.y[i]


def train_loader(batch_size=PER_RANK_BATCH, n=N_TRAIN):
    return DataLoader(IndexedData(n), batch_size=batch_size, shuffle=False)


def val_loader(batch_size=1, n=N_VAL):
    return DataLoader(IndexedData(n, seed=1), batch_size=batch_size)


class Regressor(L.LightningModule):
    """Linear regression with SGD + momentum; logs what the tests check."""

    def __init__(self, batchnorm=False, lr=0.1):
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(8, 16)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(16))
        layers += [nn.Tanh(), nn.Linear(16, 1)]
        self.net = nn.Sequential(*layers)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank_metric", float(self.global_rank), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        idx, x, y = batch
        self.log("val_count", float(len(idx)), reduce_fx="sum", sync_dist=True, batch_size=len(idx))
        self.log("val_index_sum", idx.sum().float(), reduce_fx="sum", sync_dist=True, batch_size=len(idx))
        self.log("val_loss", F.mse_loss(self(x), y), sync_dist=True, batch_size=len(idx))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        idx, x, _ = batch
        return {"idx": idx, "pred": self(x)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ManualRegressor(Regressor):
    """The same optimisation written with manual optimization (backward inside ``training_step``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        _, x, y = batch
        loss = F.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


class TwoOptimizerRegressor(ManualRegressor):
    """Manual optimization with two optimizers and two backward passes per step (GAN-like)."""

    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                torch.optim.SGD(self.net[-1].parameters(), lr=0.1)]

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        _, x, y = batch
        first.zero_grad()
        self.manual_backward(F.mse_loss(self(x), y))
        first.step()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(2 * F.mse_loss(self(x), y))
        second.step()


def epoch_order(epoch, distributed=True, n=N_TRAIN):
    """The sample order of a training epoch: as the training DistributedSampler draws it (it always shuffles, with
    seed ``PL_GLOBAL_SEED`` (unset: 0) + epoch: Lightning's rule), or as a plain one-process loader reads
    ``train_loader()`` (in order). With W ranks of batch B, the ranks' k-th batches together are
    ``order[W*B*k : W*B*(k+1)]``."""
    if not distributed:
        return list(range(n))
    g = torch.Generator()
    g.manual_seed(epoch)
    return torch.randperm(n, generator=g).tolist()


class _EpochOrder(Sampler):
    """One process reading each epoch in the order the runs it stands for read it (``distributed[epoch]``)."""

    def __init__(self, distributed):
        self.distributed, self.epoch = list(distributed), 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return N_TRAIN

    def __iter__(self):
        return iter(epoch_order(self.epoch, self.distributed[self.epoch]))


def reference_weights(epochs, batchnorm=False, world=2, distributed=None, **trainer_kwargs):
    """The single-process run the distributed ones must match: one process, global batch = world x per-rank,
    each epoch read in its run's order: ``distributed[e]`` (default: every epoch) for an epoch several ranks
    trained, else in order (an epoch trained in one process)."""
    model = trainer_kwargs.pop("model", None) or Regressor(batchnorm=batchnorm)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, enable_checkpointing=False,
                        num_sanity_val_steps=0, limit_val_batches=0, **FLAGS, **trainer_kwargs)
    order = _EpochOrder([True] * epochs if distributed is None else distributed)
    trainer.fit(model, DataLoader(IndexedData(N_TRAIN), batch_size=PER_RANK_BATCH * world, sampler=order))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class CollectiveCounter(Callback):
    """Counts Python-level torch.distributed collectives from one training batch's start to the next's.

    DDP's gradient all-reduce runs in its C++ reducer and is not counted; anything featherlight adds is.
    """

    NAMES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier",
             "reduce", "gather", "scatter", "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all",
             "_broadcast_coalesced")

    def __init__(self):
        import torch.distributed as dist

        self.calls = 0
        self.per_batch = []  # collectives between a batch's start and the next batch's start (same epoch)
        self.in_step = []  # collectives between a batch's start and its end
        self._start = None
        for name in self.NAMES:
            fn = getattr(dist, name, None)
            if fn is None:
                continue
            setattr(dist, name, self._counting(fn))

    def _counting(self, fn):
        def wrapper(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return wrapper

    def on_train_start(self, trainer, pl_module):
        self.model_type = type(trainer.model).__name__

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is not None and batch_idx > 0:
            self.per_batch.append(self.calls - self._start)
        self._start = self.calls

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.in_step.append(self.calls - self._start)


def save_json(outdir, name, obj):
    path = os.path.join(outdir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def state_to_lists(state_dict):
    return {k: v.detach().cpu().double().tolist() for k, v in state_dict.items()}


def outdir_from_argv():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    return out
