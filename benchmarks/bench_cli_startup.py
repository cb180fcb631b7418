"""Start-up of a LightningCLI program: ``python train.py fit --help`` on featherlight against the same script on
Lightning (only the import differs), with ``python -c 'import torch'`` as the floor. Runs interleaved, prints
medians and ratios. The Lightning side is skipped when Lightning is not installed.

    python benchmarks/bench_cli_startup.py [--runs 7]

``--help`` builds the whole parser (every Trainer, model, datamodule, optimizer and scheduler argument, the four
subcommands) and exits, so it is the fixed cost every CLI command pays before any work.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT = '''\
import torch

from {package}.cli import LightningCLI
from {package}.demos.boring_classes import BoringDataModule, BoringModel


class Model(BoringModel):
    """A model with a few documented arguments.

    Args:
        hidden: Width of the hidden layer.
        lr: Learning rate.
    """

    def __init__(self, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()


if __name__ == "__main__":
    LightningCLI(Model, BoringDataModule)
'''


def wall(cmd: list[str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"import torch": [py, "-c", "import torch"]}
        packages = {"featherlight": "featherlight"}
        if importlib.util.find_spec("lightning") is not None:
            packages["lightning"] = "lightning.pytorch"
        else:
            print("lightning is not installed: its side is skipped")
        for name, package in packages.items():
            path = os.path.join(tmp, f"train_{name}.py")
            with open(path, "w") as f:
                f.write(SCRIPT.format(package=package))
            cases[f"{name}: train.py fit --help"] = [py, path, "fit", "--help"]
        times: dict[str, list[float]] = {k: [] for k in cases}
        for cmd in cases.values():  # warm the file cache (and fail early if a script is broken)
            wall(cmd, tmp)
        for _ in range(args.runs):
            for name, cmd in cases.items():
                times[name].append(wall(cmd, tmp))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.runs} runs each, interleaved; medians")
    for k, v in med.items():
        print(f"  {k:40s} {v:7.3f} s")
    ours = med["featherlight: train.py fit --help"]
    print(f"featherlight --help / import torch: {ours / med['import torch']:.2f}x "
          f"({ours - med['import torch']:+.3f} s)")
    if "lightning: train.py fit --help" in med:
        theirs = med["lightning: train.py fit --help"]
        print(f"lightning --help / featherlight --help: {theirs / ours:.2f}x ({theirs - ours:+.3f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
