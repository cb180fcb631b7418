"""Checkpoint costs: saving (vs a plain ``torch.save``), the stall of a background save, training with periodic
saves, and the time to the first step of a mid-epoch resume.

Run: ``python benchmarks/bench_checkpoint.py [--repeats 7] [--mb 50] [--dir DIR] [--skip-save] [--skip-train]
[--skip-resume]``

(a) Save. A ~50 MB model (MLP, fp32) with Adam state (so the checkpoint is ~150 MB) is fitted for one step,
    then ``trainer.save_checkpoint`` is timed against ``torch.save`` of the same checkpoint dict to the same
    directory, against ``torch.save`` followed by ``fsync``, and against a hand-written durable save (temporary
    file in the same folder, fsync, rename, fsync the folder: what featherlight does, so the floor for a
    checkpoint that survives a crash; goal <= 1.10x). In the same interleaved repeats,
    ``trainer.save_checkpoint(..., background=True)`` (what ``ModelCheckpoint(async_save=True)`` does) is timed
    until it returns, i.e. the time training stalls (the state is copied into host memory; goal <= 0.10x of the
    synchronous save), and until the background write is complete. Medians are printed with ratios.
(c) Training with periodic saves. The same model trains (batch 32) with a ``ModelCheckpoint`` every 5 steps: none,
    synchronous, ``async_save=True``. The median time of a 5-step window ending with a save, minus the same without
    checkpoints, is what a save costs training, background writes included (they share the CPUs with training).
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
    stall, written = [], []
    paths = {k: os.path.join(directory, f"{k}.ckpt")
             for k in ("ours", "ours_nosync", "plain", "plain_fsync", "durable", "background")}
    real_fsync = os.fsync
    # the first background save allocates its host buffers; later ones copy into them (reported separately)
    t0 = time.perf_counter()
    pending = trainer.save_checkpoint(paths["background"], background=True)
    first_stall = time.perf_counter() - t0
    pending.wait()
    for _ in range(repeats):
        t0 = time.perf_counter()
        pending = trainer.save_checkpoint(paths["background"], background=True)
        stall.append(time.perf_counter() - t0)
        pending.wait()  # outside the other timings: nothing runs behind them
        written.append(time.perf_counter() - t0)
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
    trainer.strategy.teardown()  # the background writer's thread and buffers
    size = os.path.getsize(paths["ours"]) / 2**20
    runs = {"ours": ours, "ours_nosync": ours_nosync, "plain": plain, "plain_fsync": plain_fsync, "durable": durable,
            "dump": dump, "stall": stall, "written": written}
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
    print("    background save (trainer.save_checkpoint(background=True), as ModelCheckpoint(async_save=True)):")
    print(f"      stall (the call returns)      {med['stall'] * 1e3:8.1f} ms ({best['stall'] * 1e3:6.1f})   "
          f"stall / synchronous save: {med['stall'] / med['ours']:.3f}x ({best['stall'] / best['ours']:.3f}x)")
    print(f"      first save's stall            {first_stall * 1e3:8.1f} ms            (host buffers allocated once)")
    print(f"      until the file is written     {med['written'] * 1e3:8.1f} ms ({best['written'] * 1e3:6.1f})   "
          f"/ synchronous save: {med['written'] / med['ours']:.3f}x")
    return med


# ------------------------------------------------------------------------------------------- (c) training with saves
class StepClock(fl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())


class TrainingModel(BigModel):
    def __init__(self, mb: float, batches: int) -> None:
        super().__init__(mb)
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(torch.randn(32 * self.batches, 1024), batch_size=32)


def bench_training(directory: str, mb: float, repeats: int, threads: int, windows: int = 4, every: int = 20) -> None:
    """Windows of ``every`` steps, each ending with a save (and, in the background mode, overlapping the previous
    save's write): the median window of each mode minus the median window without checkpoints is what a save costs
    training. Medians over windows and runs hold up against the other load of a shared machine."""
    modes = ("none", "sync", "async")
    steps = every * (windows + 1) + 1
    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    found: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(repeats + 1):
        for mode in modes[r % 3:] + modes[:r % 3]:  # each mode runs first, second and third in turn
            torch.manual_seed(0)
            clock = StepClock()
            callbacks: list = [clock]
            if mode != "none":
                callbacks.append(fl.callbacks.ModelCheckpoint(
                    dirpath=os.path.join(directory, f"train_{mode}"), every_n_train_steps=every, save_top_k=1,
                    async_save=mode == "async"))
            model = TrainingModel(mb, batches=steps + 1)
            fl.Trainer(max_steps=steps, logger=False, enable_checkpointing=mode != "none", callbacks=callbacks,
                       enable_progress_bar=False, enable_model_summary=False, default_root_dir=directory,
                       limit_val_batches=0).fit(model)
            if r > 0:  # the first round warms up (allocator, caches) and is not counted
                # window k: batches every*k .. every*k+every-1, then the save at step every*(k+1); from k=1 on it
                # also overlaps the write of the save before
                starts = clock.starts
                found[mode] += [starts[every * (k + 1)] - starts[every * k] for k in range(1, windows + 1)]
    torch.set_num_threads(all_threads)
    med = {m: statistics.median(v) for m, v in found.items()}
    print(f"(c) training on {threads} of {os.cpu_count()} CPU threads with a save every {every} steps: {windows} windows "
          f"of {every} steps (each ending with a save) x {repeats} interleaved runs, median window:")
    print(f"    no checkpoints                {med['none'] * 1e3:8.1f} ms   ({med['none'] / every * 1e3:.1f} ms per step)")
    cost = {m: med[m] - med["none"] for m in ("sync", "async")}
    for mode in ("sync", "async"):
        print(f"    ModelCheckpoint {mode:5s}         {med[mode] * 1e3:8.1f} ms   training time per save "
              f"{cost[mode] * 1e3:7.1f} ms")
    print(f"    training time per save, async / sync: {cost['async'] / cost['sync']:.3f}x "
          "(the background write shares the CPUs with training)")


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
    parser.add_argument("--skip-train", action="store_true")
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
        if not args.skip_train:
            # all CPUs train (the write competes with training), then one CPU is left free, as when a GPU trains
            # and the CPU mostly waits for it
            for threads in dict.fromkeys((torch.get_num_threads(), max(torch.get_num_threads() - 1, 1))):
                bench_training(directory, args.mb, max(args.repeats - 1, 1), threads)
        if not args.skip_resume:
            bench_resume(directory, max(args.repeats // 2, 1))


if __name__ == "__main__":
    main()
