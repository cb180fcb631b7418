"""Peak memory (max RSS) of the tiny workload: featherlight against the hand-written loop, each in its own
process, so the difference is what the framework adds.

    python benchmarks/bench_memory.py [--steps 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {bench!r})
import bench_loop_overhead as b
torch.set_num_threads(1)
loader = b.make_data({steps})
if {framework!r} == "raw":
    b.raw_loop(loader)
else:
    import importlib, warnings, logging
    warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
    b.framework_loop(importlib.import_module({framework!r}), loader, True, "/tmp/bench_memory")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(framework: str, steps: int) -> int:
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), steps=steps, framework=framework)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    names = ["raw", "featherlight"]
    try:
        import lightning  # noqa: F401

        names.append("lightning.pytorch")
    except ImportError:
        pass
    peaks = {n: statistics.median(peak_kib(n, args.steps) for _ in range(args.runs)) for n in names}
    print(f"peak RSS, tiny workload (lean flags), {args.steps} steps, median of {args.runs} processes")
    for n, kib in peaks.items():
        print(f"  {n:18s} {kib / 1024:8.1f} MiB   {((kib - peaks['raw']) / 1024):+7.1f} MiB over raw")


if __name__ == "__main__":
    main()
