"""Checkpoint costs: saving (vs a plain ``torch.save``) and the time to the first step of a mid-epoch resume.

Run: ``python benchmarks/bench_checkpoint.py [--repeats 7] [--mb 50] [--dir DIR] [--skip-save] [--skip-resume]``

(a) Save. A ~50 MB model (MLP, fp32) with Adam state (so the checkpoint is ~150 MB) is fitted for one step,
    then ``trainer.save_checkpoint`` is timed against ``torch.save`` of the same checkpoint dict to the same
    directory, against ``torch.save`` followed by ``fsync``, and against a hand-written durable save (temporary
    file in the same folder, fsync, rename, fsync the folder: what featherlight does, so the floor for a
    checkpoint that survives a crash; goal <= 1.10x). Repeats are interleaved; medians are printed with ratios.
(b) Resume. A run over a map-style dataset of 10,240 batches (tiny model, no validation) saves a checkpoint at
    batch 9,999 of its first epoch. The time from ``trainer.fit(ckpt_path=...)`` to the first training step
    is compared with a fresh ``trainer.fit``, and the dataset's ``__getitem__`` calls before that first step
    are counted (the resumable sampler skips the trained batches by index: expect one batch of calls).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import featherlight as fl


# ------------------------------------------------------------------------------------------- (a) save
class BigModel(fl.LightningModule):
    def __init__(self, mb: float = 50.0) -> None:
        super().__init__()
        width = 1024
        layers = max(int(mb * 2**20 / 4 / (width * width + width)), 1)
        self.net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)

    def train_dataloader(self):
        return DataLoader(torch.randn(4, 1024), batch_size=2)


def _fsync_save(obj, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _durable_save(obj, path: str) -> None:
    """What a careful hand-written loop does to save durably: a temporary file in the same folder, fsync,
    rename over the target, fsync the folder (so the rename itself survives a crash)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_save(directory: str, mb: float, repeats: int) -> dict[str, float]:
    from featherlight.trainer.checkpoint import _dump_checkpoint

    model = BigModel(mb)
    trainer = fl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=directory)
    trainer.fit(model)
    checkpoint = _dump_checkpoint(trainer)  # the same dict, for the plain torch.save baselines
    params = sum(p.numel() for p in model.parameters())
    ours, ours_nosync, plain, plain_fsync, durable, dump = [], [], [], [], [], []
    paths = {k: os.path.join(directory, f"{k}.ckpt")
             for k in ("ours", "ours_nosync", "plain", "plain_fsync", "durable")}
    real_fsync = os.fsync
    for _ in range(repeats):
        t0 = time.perf_counter()
        trainer.save_checkpoint(paths["ours"])
        ours.append(time.perf_counter() - t0)
        os.fsync = lambda fd: None  # diagnostic only: our write without its flush to disk
        try:
            t0 = time.perf_counter()
            trainer.save_checkpoint(paths["ours_nosync"])
            ours_nosync.append(time.perf_counter() - t0)
        finally:
            os.fsync = real_fsync
        t0 = time.perf_counter()
        torch.save(checkpoint, paths["plain"])
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _fsync_save(checkpoint, paths["plain_fsync"])
        plain_fsync.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _durable_save(checkpoint, paths["durable"])
        durable.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _dump_checkpoint(trainer)
        dump.append(time.perf_counter() - t0)
    size = os.path.getsize(paths["ours"]) / 2**20
    runs = {"ours": ours, "ours_nosync": ours_nosync, "plain": plain, "plain_fsync": plain_fsync, "durable": durable,
            "dump": dump}
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: min(v) for k, v in runs.items()}
    print(f"(a) save: model {params * 4 / 2**20:.1f} MB of fp32 weights, checkpoint file {size:.1f} MB, "
          f"{repeats} interleaved repeats; median (min), ratio of ours to each:")

    def row(label: str, key: str, ratio: bool = True) -> None:
        line = f"    {label:30s}{med[key] * 1e3:8.1f} ms ({best[key] * 1e3:6.1f})"
        if ratio:
            line += f"   ours / this: {med['ours'] / med[key]:.3f}x ({best['ours'] / best[key]:.3f}x)"
        print(line)

    row("trainer.save_checkpoint", "ours", ratio=False)
    row("torch.save", "plain")
    row("torch.save + fsync", "plain_fsync")
    row("hand-written durable save", "durable")  # the floor: tmp file, fsync, rename, fsync dir (goal <= 1.10x)
    print(f"    building the dict (_dump_checkpoint) {med['dump'] * 1e3:.2f} ms; diagnostic, our write with fsync off: "
          f"{med['ours_nosync'] * 1e3:.1f} ms = {med['ours_nosync'] / med['plain']:.3f}x torch.save "
          "(the rest of the gap is the flush to disk)")
    return med


# ------------------------------------------------------------------------------------------- (b) resume
class CountingDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        self.calls += 1
        return torch.full((4,), float(i % 7))


class TinyModel(fl.LightningModule):
    def __init__(self, dataset: CountingDataset, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size
        self.layer = nn.Linear(4, 1)
        self.first_step_at = None
        self.calls_at_first_step = None

    def training_step(self, batch, batch_idx):
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
            self.calls_at_first_step = self.dataset.calls
            self.first_batch_idx = batch_idx
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


class SaveAt(fl.Callback):
    def __init__(self, batch_idx: int, path: str) -> None:
        self.batch_idx, self.path = batch_idx, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _trainer(directory: str, **kwargs) -> fl.Trainer:
    return fl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=directory, **kwargs)


def bench_resume(directory: str, repeats: int, batches: int = 10_240, at: int = 9_999, batch_size: int = 4):
    path = os.path.join(directory, "mid_epoch.ckpt")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    _trainer(directory, callbacks=[SaveAt(at, path)]).fit(TinyModel(CountingDataset(batches * batch_size), batch_size))
    made_in = time.perf_counter() - t0
    fresh, resumed, calls, first = [], [], [], []
    for _ in range(repeats):
        model = TinyModel(CountingDataset(batches * batch_size), batch_size)
        t0 = time.perf_counter()
        _trainer(directory, max_steps=1).fit(model)
        fresh.append(model.first_step_at - t0)
        model = TinyModel(CountingDataset(batches * batch_size), batch_size)
        t0 = time.perf_counter()
        _trainer(directory, max_steps=at + 2).fit(model, ckpt_path=path)
        resumed.append(model.first_step_at - t0)
        calls.append(model.calls_at_first_step)
        first.append(model.first_batch_idx)
    print(f"(b) resume {at + 1:,} batches into an epoch of {batches:,} (checkpoint made in {made_in:.1f} s), "
          f"{repeats} interleaved repeats, medians:")
    print(f"    fresh fit -> first step       {statistics.median(fresh) * 1e3:8.1f} ms")
    print(f"    resumed fit -> first step     {statistics.median(resumed) * 1e3:8.1f} ms   "
          f"(first batch_idx {first[0]}, __getitem__ calls before it: {calls[0]} = {calls[0] / batch_size:g} batch(es))")
    return fresh, resumed, calls


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--skip-save", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args(argv)
    import logging
    import warnings

    logging.getLogger("featherlight").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        if not args.skip_save:
            bench_save(directory, args.mb, args.repeats)
        if not args.skip_resume:
            bench_resume(directory, max(args.repeats // 2, 1))


if __name__ == "__main__":
    main()
