"""Process start to exit: a featherlight `fast_dev_run=True` script against a hand-written one-step
script, and the cost of `import featherlight` on top of `import torch`. Runs interleaved, prints medians.

The package's bytecode is compiled first (`compileall`), as `pip install` does for a wheel: an editable install
under `PYTHONDONTWRITEBYTECODE=1` (set on the development machines) recompiles about 80 modules from source on
every start, about 0.09 s that no installed user pays. Torch's bytecode is compiled at install time too.

    python benchmarks/bench_startup.py [--runs 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    import compileall

    import featherlight

    compileall.compile_dir(os.path.dirname(featherlight.__file__), quiet=1)
    cases = {
        "raw one-step script": [py, os.path.join(HERE, "scripts", "raw_one_step.py")],
        "featherlight fast_dev_run": [py, os.path.join(HERE, "scripts", "featherlight_fast_dev_run.py")],
        "import torch": [py, "-c", "import torch"],
        "import torch, featherlight": [py, "-c", "import torch, featherlight"],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, cmd in cases.items():  # warm the file cache
        wall(cmd)
    for _ in range(args.runs):
        for name, cmd in cases.items():
            times[name].append(wall(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.runs} runs each, interleaved; medians")
    for k, v in med.items():
        print(f"  {k:30s} {v:7.3f} s")
    print(f"fast_dev_run script / raw script: {med['featherlight fast_dev_run'] / med['raw one-step script']:.3f}x")
    print(f"import featherlight on top of torch: {med['import torch, featherlight'] - med['import torch']:+.3f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
