"""Two-rank DDP throughput: featherlight's ``Trainer(strategy="ddp")`` against a hand-written DDP loop.

Both run in the same two processes of one job (featherlight starts rank 1 by running this script again;
the hand-written loop then reuses the process group), interleaved over several repeats so drift affects
both alike. The hand-written loop: ``DistributedDataParallel`` + ``DistributedSampler`` + SGD, the same
model, data, batch size and number of steps. Only the epoch loop is timed (setup excluded).

    python benchmarks/bench_ddp.py [--steps 400] [--repeats 5] [--hidden 256] [--batch 64]

Prints, on rank 0, milliseconds per step of each and their ratio (featherlight / hand-written).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


import featherlight as L

torch.set_num_threads(1)


def make_model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 32))


def make_data(steps: int, batch: int, world: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    n = steps * batch * world
    return TensorDataset(torch.randn(n, 32, generator=g), torch.randn(n, 32, generator=g))


class Net(L.LightningModule):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = make_model(hidden)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Clock(L.Callback):
    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self._t0


def featherlight_run(dataset: TensorDataset, args: argparse.Namespace) -> float:
    clock = Clock()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(Net(args.hidden), DataLoader(dataset, batch_size=args.batch))
    return clock.seconds


def raw_run(dataset: TensorDataset, args: argparse.Namespace) -> float:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(make_model(args.hidden))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=False)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler)
    sampler.set_epoch(0)
    t0 = time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (per rank)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    dataset = make_data(args.steps, args.batch, 2)
    times: dict[str, list[float]] = {"hand-written DDP": [], "featherlight ddp": []}
    featherlight_run(make_data(4, args.batch, 2), args)  # starts rank 1 and the process group; warm-up
    for _ in range(args.repeats):
        dist.barrier()
        times["hand-written DDP"].append(raw_run(dataset, args))
        dist.barrier()
        times["featherlight ddp"].append(featherlight_run(dataset, args))
    if dist.get_rank() == 0:
        raw = statistics.median(times["hand-written DDP"])
        print(f"torch {torch.__version__}, 2 ranks (gloo, CPU, 1 thread each), MLP hidden={args.hidden}, "
              f"batch {args.batch}/rank, {args.steps} steps x {args.repeats} repeats; medians")
        for name, values in times.items():
            ms = statistics.median(values) / args.steps * 1e3
            print(f"{name:20s} {ms:8.3f} ms/step   ratio {statistics.median(values) / raw:5.3f}")


if __name__ == "__main__":
    main()
