"""Per-step overhead of the training loop against a hand-written PyTorch loop, measured in one run.

Workload (from the core issue): Linear(32, 32) + MSE, batch 64, SGD, `self.log` every step; progress
bar, logger, checkpointing and model summary off ("lean"), or left at their defaults ("defaults").

Shared 2-core machines change speed by up to 50% within seconds, so long runs compared one after the
other mostly measure the machine. Each *trial* here runs the raw loop, every contender, then the raw loop
again, a few hundred steps each; a contender's time is the mean step time between its 10th and last
``training_step`` (set-up, warm-up and teardown excluded), divided by the mean of the two raw runs around it.
The report gives the median of those per-trial ratios, their interquartile range, and the added
microseconds that ratio means at the median raw step time.

    python benchmarks/bench_loop_overhead.py [--trials 40] [--steps 300] [--prebatched] [--only featherlight]
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
_clock = time.perf_counter
WARMUP = 10  # steps left out of each timing


class _Batches:
    """An iterable of ready batches (frameworks treat a bare list as several dataloaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def make_data(steps: int, prebatched: bool = False):
    """The issue's workload: a DataLoader of batches of 64. ``prebatched`` gives a plain list of the same
    batches instead, so data loading drops out and the loop's own overhead is what differs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 64, 32, generator=g)
    y = torch.randn(steps * 64, 32, generator=g)
    if prebatched:
        return _Batches([(x[i:i + 64], y[i:i + 64]) for i in range(0, steps * 64, 64)])
    return DataLoader(TensorDataset(x, y), batch_size=64)


def _step_time(stamps: list[float]) -> float:
    """Mean seconds per step from the start of step ``WARMUP`` to the start of the last step."""
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


def raw_loop(loader) -> float:
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stamps = []
    for x, y in loader:
        stamps.append(_clock())
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return _step_time(stamps)


def framework_loop(L, loader, lean: bool, root: str) -> float:
    torch.manual_seed(0)
    stamps: list[float] = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 32)

        def training_step(self, batch, batch_idx):
            stamps.append(_clock())
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    kwargs = dict(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root, num_sanity_val_steps=0)
    if lean:
        kwargs.update(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer = L.Trainer(**kwargs)
    with open(os.devnull, "w") as devnull:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = devnull
        try:
            trainer.fit(Tiny(), loader)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    return _step_time(stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300, help="steps per run")
    parser.add_argument("--prebatched", action="store_true", help="a list of batches instead of a DataLoader")
    parser.add_argument("--only", default=None, help="featherlight or lightning")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    frameworks = {}
    if args.only != "lightning":
        frameworks["featherlight"] = importlib.import_module("featherlight")
    if args.only != "featherlight":
        try:
            frameworks["lightning"] = importlib.import_module("lightning.pytorch")
        except ImportError:
            pass
    loader = make_data(args.steps, args.prebatched)
    raws: list[float] = []
    ratios: dict[str, list[float]] = {}
    root = tempfile.mkdtemp()
    try:
        raw_loop(loader)  # first-use costs (lazy imports in torch.optim) out of the way
        for _ in range(args.trials):
            before = raw_loop(loader)
            times = {}
            for name, L in frameworks.items():
                for lean in (True, False):
                    times[f"{name} ({'lean' if lean else 'defaults'})"] = framework_loop(L, loader, lean, root)
            raw = (before + raw_loop(loader)) / 2
            raws.append(raw)
            for key, t in times.items():
                ratios.setdefault(key, []).append(t / raw)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raw_us = statistics.median(raws) * 1e6
    data = "pre-batched list" if args.prebatched else "DataLoader"
    print(f"torch {torch.__version__}, {data}, {args.trials} trials x {args.steps} steps, 1 thread")
    print(f"raw loop: {raw_us:.1f} us/step (median over trials)")
    print(f"{'loop':26s} {'ratio':>7s} {'IQR':>13s} {'added us':>9s}")
    for key, values in ratios.items():
        med = statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(f"{key:26s} {med:7.3f} {q1:6.3f}-{q3:6.3f} {(med - 1) * raw_us:9.1f}")


if __name__ == "__main__":
    main()
