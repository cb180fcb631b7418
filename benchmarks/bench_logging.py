"""The cost of logging many values per step: featherlight and Lightning against a hand-written loop doing the same
user work, measured in one run.

Workload: Linear(32, 32) + MSE, batch 64, SGD, pre-batched (data loading out of the way). Each step computes K
scalar tensors from the loss and logs them: K-1 as epoch means (``on_step=False, on_epoch=True``) and one also
per step on the progress bar (``on_step=True, on_epoch=True, prog_bar=True``); in the ``log_dict`` row the K-1
epoch means go through one ``self.log_dict`` call instead. C callbacks with an
``on_train_batch_end`` hook that does nothing. Progress bar, logger, checkpointing and model summary off.

The hand-written loop does what a careful person would: keeps a running sum (value x batch size) and count per
value on the device, calls C functions per step, reads the per-step value with ``.item()`` every 50 steps (a
logger's interval) and the epoch means once at the end.

Each trial runs the hand loop, each contender, then the hand loop again; a contender's per-step time is divided
by the mean of the two hand-loop runs around it. The report gives medians over trials, the added microseconds
per step, and the added cost per extra logged value ((K=50 - K=1) / 49).

    python benchmarks/bench_logging.py [--trials 15] [--steps 300] [--only featherlight]
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

torch.set_num_threads(1)
_clock = time.perf_counter
WARMUP = 10
CONFIGS = [(1, 0, "log"), (10, 0, "log"), (50, 0, "log"), (50, 5, "log"), (50, 0, "log_dict")]


def _batches(steps: int) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 64, 32, generator=g)
    y = torch.randn(steps * 64, 32, generator=g)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, steps * 64, 64)]


class _Batches:
    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _per_step(stamps: list) -> float:
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


def hand_loop(batches: list, k: int, c: int, api: str = "log") -> float:
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scales = [1.0 + i / k for i in range(k)]
    sums = [torch.zeros(()) for _ in range(k)]
    count = 0
    hooks = [lambda *a: None for _ in range(c)]
    stamps = []
    for step, (x, y) in enumerate(batches):
        stamps.append(_clock())
        loss = torch.nn.functional.mse_loss(model(x), y)
        values = [loss * s for s in scales]
        for i, v in enumerate(values):
            sums[i] += v.detach() * 64
        count += 64
        loss.backward()
        opt.step()
        opt.zero_grad()
        for hook in hooks:
            hook(model, loss, x, step)
        if (step + 1) % 50 == 0:
            values[0].item()  # the per-step value, read at the logging interval
    [s.item() / count for s in sums]  # the epoch means
    return _per_step(stamps)


def framework_loop(L, batches: list, k: int, c: int, root: str, api: str = "log") -> float:
    torch.manual_seed(0)
    stamps: list = []
    scales = [1.0 + i / k for i in range(k)]
    names = [f"value_{i}" for i in range(k)]

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(32, 32)

        def training_step(self, batch, batch_idx):
            stamps.append(_clock())
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            values = [loss * s for s in scales]
            self.log(names[0], values[0], on_step=True, on_epoch=True, prog_bar=True)
            if api == "log_dict":
                self.log_dict(dict(zip(names[1:], values[1:])), on_step=False, on_epoch=True)
            else:
                for name, v in zip(names[1:], values[1:]):
                    self.log(name, v, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Noop(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pass

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root, num_sanity_val_steps=0,
                        logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[Noop() for _ in range(c)])
    with open(os.devnull, "w") as devnull:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = devnull
        try:
            trainer.fit(Tiny(), _Batches(batches))
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    return _per_step(stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--steps", type=int, default=300)
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
    batches = _batches(args.steps)
    added: dict[tuple, list] = {}
    hand: dict[tuple, list] = {}
    root = tempfile.mkdtemp()
    hand_loop(batches, 1, 0)
    for _ in range(args.trials):
        for k, c, api in CONFIGS:
            before = hand_loop(batches, k, c)
            times = {name: framework_loop(L, batches, k, c, root, api) for name, L in frameworks.items()}
            base = (before + hand_loop(batches, k, c)) / 2
            hand.setdefault((k, c, api), []).append(base)
            for name, t in times.items():
                added.setdefault((name, k, c, api), []).append((t - base) * 1e6)
    print(f"torch {torch.__version__}, pre-batched, {args.trials} trials x {args.steps} steps, 1 thread")
    print(f"{'values K':>8s} {'callbacks C':>11s} {'api':>8s} {'hand us/step':>12s}  " +
          "  ".join(f"{name + ' added us':>22s}" for name in frameworks))
    for k, c, api in CONFIGS:
        row = f"{k:8d} {c:11d} {api:>8s} {statistics.median(hand[(k, c, api)]) * 1e6:12.1f}  "
        row += "  ".join(f"{statistics.median(added[(name, k, c, api)]):22.1f}" for name in frameworks)
        print(row)
    for name in frameworks:
        slope = (statistics.median(added[(name, 50, 0, "log")]) - statistics.median(added[(name, 1, 0, "log")])) / 49
        print(f"{name}: added cost per extra logged value {slope:.2f} us/step (goal for featherlight: <= 1.5)")


if __name__ == "__main__":
    main()
