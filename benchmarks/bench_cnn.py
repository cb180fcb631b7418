"""A small CNN trained for 2 epochs with validation and a checkpoint per epoch, against a hand-written
loop doing the same work (same data order, same validation, torch.save per epoch), in the same run.
With ``--precision bf16-mixed`` both run under CPU autocast.

    python benchmarks/bench_cnn.py [--repeats 3] [--precision 32-true|bf16-mixed]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    train = DataLoader(TensorDataset(x[:1536], y[:1536]), batch_size=64)
    val = DataLoader(TensorDataset(x[1536:], y[1536:]), batch_size=256)
    return train, val


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def raw(train: DataLoader, val: DataLoader, root: str, bf16: bool) -> float:
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))
    t0 = time.perf_counter()
    for epoch in range(2):
        model.train()
        for x, y in train:
            with ctx():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with torch.inference_mode():
            total = 0.0
            for x, y in val:
                with ctx():
                    total += nn.functional.cross_entropy(model(x), y) * len(y)
            _ = (total / 512).item()
        torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict()}, os.path.join(root, "raw.ckpt"))
    return time.perf_counter() - t0


def framework(L, train: DataLoader, val: DataLoader, root: str, bf16: bool, lean: bool) -> float:
    torch.manual_seed(0)

    class CNN(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    kwargs = dict(max_epochs=2, default_root_dir=root, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                  precision="bf16-mixed" if bf16 else "32-true")
    if lean:
        kwargs.update(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**kwargs)
    with open(os.devnull, "w") as devnull:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = devnull
        try:
            t0 = time.perf_counter()
            trainer.fit(CNN(), train, val)
            return time.perf_counter() - t0
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import importlib

    frameworks = {"featherlight": importlib.import_module("featherlight")}
    if args.only != "featherlight":
        try:
            frameworks["lightning"] = importlib.import_module("lightning.pytorch")
        except ImportError:
            pass
    bf16 = args.precision == "bf16-mixed"
    train, val = data()
    times: dict[str, list[float]] = {"raw": []}
    root = tempfile.mkdtemp()
    try:
        raw(train, val, root, bf16)  # warm-up
        for _ in range(args.repeats):
            times["raw"].append(raw(train, val, root, bf16))
            for name, L in frameworks.items():
                for lean in (False, True):
                    key = f"{name} ({'no bar/logger' if lean else 'defaults'})"
                    times.setdefault(key, []).append(framework(L, train, val, root, bf16, lean))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(times["raw"])
    print(f"small CNN, 2 epochs x 24 batches + validation + checkpoint per epoch, {args.precision}, "
          f"{args.repeats} repeats, 1 thread; medians")
    for key, ts in times.items():
        med = statistics.median(ts)
        print(f"  {key:34s} {med:7.3f} s  {med / base:6.3f}x")


if __name__ == "__main__":
    main()
