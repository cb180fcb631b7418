"""Per-step overhead of the training loop against a hand-written PyTorch loop, measured in one run.

Workload (from the core issue): Linear(32, 32) + MSE, batch 64, SGD, `self.log` every step; progress
bar, logger, checkpointing and model summary off ("lean"), or left at their defaults ("defaults").
Prints microseconds per step and the ratio to the raw loop; Lightning too when it is installed.

    python benchmarks/bench_loop_overhead.py [--steps 3000] [--repeats 5]
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


def raw_loop(loader: DataLoader) -> float:
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - t0


def framework_loop(L, loader: DataLoader, lean: bool, root: str) -> float:
    torch.manual_seed(0)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 32)

        def training_step(self, batch, batch_idx):
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
    model = Tiny()
    timing = {}

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            timing["t0"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            timing["t1"] = time.perf_counter()

    trainer.callbacks.append(Clock())
    with open(os.devnull, "w") as devnull:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = devnull
        try:
            trainer.fit(model, loader)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    return timing["t1"] - timing["t0"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prebatched", action="store_true", help="a list of batches instead of a DataLoader")
    parser.add_argument("--only", default=None, help="featherlight or lightning")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    frameworks = {"featherlight": importlib.import_module("featherlight")}
    if args.only != "featherlight":
        try:
            frameworks["lightning"] = importlib.import_module("lightning.pytorch")
        except ImportError:
            pass
    loader = make_data(args.steps, args.prebatched)
    results: dict[str, list[float]] = {"raw": []}
    root = tempfile.mkdtemp()
    try:
        for _ in range(args.repeats):  # interleaved so drift affects every contender alike
            results["raw"].append(raw_loop(loader))
            for name, L in frameworks.items():
                for lean in (True, False):
                    key = f"{name} ({'lean' if lean else 'defaults'})"
                    results.setdefault(key, []).append(framework_loop(L, loader, lean, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raw = statistics.median(results["raw"]) / args.steps * 1e6
    data = "pre-batched list" if args.prebatched else "DataLoader"
    print(f"torch {torch.__version__}, {data}, {args.steps} steps x {args.repeats} repeats, 1 thread; medians")
    print(f"{'loop':28s} {'us/step':>9s} {'added us':>9s} {'ratio':>7s}")
    for key, times in results.items():
        us = statistics.median(times) / args.steps * 1e6
        print(f"{key:28s} {us:9.1f} {us - raw:9.1f} {us / raw:7.3f}")


if __name__ == "__main__":
    main()
