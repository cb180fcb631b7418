"""Checks that need a CUDA GPU, in one script that fits a short device lease (under ~8 minutes on one GPU).

    python benchmarks/gpu_checks.py [--out DIR] [--skip-tests]

1. The GPU-marked tests (``pytest -m gpu``): nccl DDP, 16-mixed with a real GradScaler, bf16 on CUDA, FSDP.
2. Per-step overhead on a ~10 ms CUDA step: a hand-written loop against featherlight (lean), interleaved
   trials, each timed with CUDA events around the whole run of steps (goal: within 1 % of raw).
3. A full epoch with default flags under ``torch.cuda.set_sync_debug_mode("warn")``: how many host-device
   syncs happen per training step, and where (goal: none per step; a few at log intervals, progress refreshes
   and epoch ends are expected).
4. The next batch's copy from pinned memory (``pin_memory=True``, ``non_blocking``) while the current step
   computes: the step time with batches on the host, pinned, against batches already on the device.

Prints a summary and writes ``gpu_checks.json`` into ``--out``. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))


def _calibrate_width(target_ms: float = 10.0, batch: int = 1024) -> int:
    """A width whose forward+backward+SGD step takes about ``target_ms`` on this GPU."""
    width = 1024
    while True:
        model = _model(width).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(batch, width, device="cuda")
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / 10 * 1e3
        if ms >= target_ms or width >= 32768:
            return width
        width = int(width * max(1.2, (target_ms / max(ms, 1e-3)) ** 0.5))


def _raw(width: int, batches: list, steps: int) -> float:
    torch.manual_seed(0)
    model = _model(width).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i, x in enumerate(batches[:steps]):
        if i == 10:
            start.record()
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (steps - 10)


def _featherlight(width: int, batches: list, steps: int) -> float:
    import featherlight as L

    times: dict = {}

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = _model(width)

        def training_step(self, batch, batch_idx):
            if batch_idx == 10:
                times["start"] = torch.cuda.Event(enable_timing=True)
                times["start"].record()
            loss = self.net(batch).pow(2).mean()
            self.log("loss", loss)
            return loss

        def on_train_end(self):
            times["end"] = torch.cuda.Event(enable_timing=True)
            times["end"].record()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    trainer = L.Trainer(accelerator="cuda", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Model(), train_dataloaders=_Prebatched(batches[:steps]))
    torch.cuda.synchronize()
    return times["start"].elapsed_time(times["end"]) / (steps - 10)


class _Prebatched:
    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def check_overhead(trials: int = 7, steps: int = 200) -> dict:
    width = _calibrate_width()
    batches = [torch.randn(1024, width, device="cuda") for _ in range(steps)]
    ratios, raw_ms = [], []
    for _ in range(trials):
        a = _raw(width, batches, steps)
        ours = _featherlight(width, batches, steps)
        b = _raw(width, batches, steps)
        raw_ms.append((a + b) / 2)
        ratios.append(ours / ((a + b) / 2))
    return {"width": width, "raw_step_ms": statistics.median(raw_ms), "ratio": statistics.median(ratios),
            "ratios": ratios}


def check_syncs(steps: int = 300) -> dict:
    """Default flags (progress bar, logger, checkpointing), one epoch, sync debug mode "warn"."""
    import featherlight as L

    data = TensorDataset(torch.randn(steps * 64, 256), torch.randn(steps * 64, 1))

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    trainer = L.Trainer(accelerator="cuda", devices=1, max_epochs=1, default_root_dir=os.path.join("/tmp", "gpu_sync"))
    loader = DataLoader(data, batch_size=64, pin_memory=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(Model(), loader)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where: dict[str, int] = {}
    for w in syncs:
        key = f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}"
        where[key] = where.get(key, 0) + 1
    return {"steps": steps, "syncs": len(syncs), "per_step": len(syncs) / steps,
            "where": dict(sorted(where.items(), key=lambda kv: -kv[1])[:15])}


def check_pinned_overlap(steps: int = 200) -> dict:
    """Step time with host batches (pinned, copied non_blocking by the trainer) vs batches already on the GPU."""
    import featherlight as L

    width = 4096
    host = [torch.randn(2048, width).pin_memory() for _ in range(16)]
    device = [t.cuda() for t in host]

    def run(batches: list) -> float:
        times: dict = {}

        class Model(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = _model(width)

            def training_step(self, batch, batch_idx):
                if batch_idx == 10:
                    torch.cuda.synchronize()
                    times["start"] = time.perf_counter()
                return self.net(batch).pow(2).mean()

            def on_train_end(self):
                torch.cuda.synchronize()
                times["end"] = time.perf_counter()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=1e-3)

        trainer = L.Trainer(accelerator="cuda", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(Model(), train_dataloaders=_Prebatched([batches[i % len(batches)] for i in range(steps)]))
        return (times["end"] - times["start"]) / (steps - 10) * 1e3

    on_device = statistics.median(run(device) for _ in range(3))
    pinned = statistics.median(run(host) for _ in range(3))
    return {"step_ms_on_device": on_device, "step_ms_pinned_host": pinned, "ratio": pinned / on_device}


def run_gpu_tests() -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, timeout=420)
    tail = (proc.stdout + proc.stderr)[-3000:]
    return {"returncode": proc.returncode, "tail": tail}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to check here (run this on a machine with a GPU).")
        return
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if not args.skip_tests:
        results["gpu_tests"] = run_gpu_tests()
        print("GPU-marked tests:", results["gpu_tests"]["tail"].strip().splitlines()[-1:])
    results["overhead"] = check_overhead()
    o = results["overhead"]
    print(f"per-step overhead on a {o['raw_step_ms']:.2f} ms CUDA step: featherlight/raw = {o['ratio']:.4f}")
    results["syncs"] = check_syncs()
    s = results["syncs"]
    print(f"host-device syncs in one epoch with default flags: {s['syncs']} over {s['steps']} steps "
          f"({s['per_step']:.3f} per step); where: {s['where']}")
    results["pinned"] = check_pinned_overlap()
    p = results["pinned"]
    print(f"step with pinned host batches {p['step_ms_pinned_host']:.2f} ms vs on-device {p['step_ms_on_device']:.2f} ms "
          f"(ratio {p['ratio']:.3f})")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_checks.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
