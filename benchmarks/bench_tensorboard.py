"""Cost of ``TensorBoardLogger.log_metrics`` with featherlight's scalar event writer against the SummaryWriter path.

Run: ``python benchmarks/bench_tensorboard.py [--calls 2000] [--trials 9] [--blocks 400] [--every 50]``

"before" is what ``log_metrics`` did until now: ``.item()`` on 0-dim tensors, then
``logger.experiment.add_scalar`` (``torch.utils.tensorboard.SummaryWriter``) once per metric; the SummaryWriter
hands each event to a background thread. "after" is ``TensorBoardLogger.log_metrics``: one event per call, queued,
then encoded by hand and written in batches from the calling thread (featherlight.loggers._tfevents). Both log
``{"loss": <0-dim tensor>, "epoch": 0}``.

(a) Per call, back to back: ``--calls`` calls, then a flush, so that the work of the background thread is
    included. Reports microseconds per call of wall time and of process CPU time (``time.process_time``, which
    counts every thread of the process).
(b) In a training loop: a tiny model (Linear(32, 32) + MSE, batch 64, SGD) trains in blocks of ``--every`` steps
    (the Trainer's ``log_every_n_steps``); a block starts with one log call of "before", "after" or none, in a
    rotating order, all three loggers alive throughout. Reports the extra wall and CPU microseconds of a block
    over a block without logging (mean over ``--blocks`` blocks, with its standard error), i.e. per log call,
    and per step: the log call itself, the background thread's wake-up and its contention for the GIL, and the
    CPU caches the training step finds disturbed.

(c) The event writer itself, on the same log calls (``{"train_loss": x, "epoch": e}`` per call, serialized and
    framed into a buffer): the hand-written protobuf encoder and CRC-32C featherlight had (``_tfevents_handwritten``)
    against the tensorboard package's own ``event_pb2`` messages and ``RecordWriter`` framing (what ``_tfevents``
    uses now), and the two mixes. Microseconds per call, and the one-off import of the library pieces in a fresh
    process (``--skip-import`` to leave that out).

Everything is interleaved finely because shared 2-core machines change speed by tens of percent within seconds.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featherlight.loggers import TensorBoardLogger  # noqa: E402
from featherlight.loggers.logger import _add_prefix  # noqa: E402

torch.set_num_threads(1)


def log_metrics_before(logger: TensorBoardLogger, metrics: Mapping, step: int) -> None:
    """The SummaryWriter path, as ``TensorBoardLogger.log_metrics`` was written before the scalar writer."""
    metrics = _add_prefix(metrics, logger._prefix, logger.LOGGER_JOIN_CHAR)
    experiment = logger.experiment
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            experiment.add_scalars(key, dict(value), step)
            continue
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()
        experiment.add_scalar(key, value, step)


def log_metrics_after(logger: TensorBoardLogger, metrics: Mapping, step: int) -> None:
    logger.log_metrics(metrics, step)


VARIANTS = {"before": log_metrics_before, "after": log_metrics_after}


def _flush(logger: TensorBoardLogger) -> None:
    if logger._scalar_writer is not None:
        logger._scalar_writer.flush()
    if logger._experiment is not None:
        logger._experiment.flush()  # waits until the background thread has written everything queued


def _new_logger(root: str, name: str) -> TensorBoardLogger:
    logger = TensorBoardLogger(root, name=name)
    if name == "before":
        logger.experiment  # noqa: B018 - created outside the timings, as the trainer does at setup
    return logger


# ------------------------------------------------------------------------------------------- (a) per call
def per_call(root: str, calls: int) -> tuple[float, float]:
    """Microseconds per call (wall, process CPU) for each variant, one trial."""
    out = {}
    loss = torch.tensor(0.5)
    for name, log in VARIANTS.items():
        logger = _new_logger(root, name)
        log(logger, {"loss": loss, "epoch": 0}, -1)  # first call: opens the files
        _flush(logger)
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(calls):
            log(logger, {"loss": loss, "epoch": 0}, step)
        _flush(logger)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        logger.finalize("success")
        out[name] = (wall / calls * 1e6, cpu / calls * 1e6)
    return out


# ------------------------------------------------------------------------------------------- (b) in a loop
def in_loop(root: str, data, every: int, blocks: int) -> dict[str, list[tuple[float, float]]]:
    """Train in blocks of ``every`` steps; a block starts with a log call of the variant its turn gives ("none": no
    call). Returns each variant's (wall, process CPU) seconds per block."""
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loggers = {name: _new_logger(root, name) for name in VARIANTS}
    for name, logger in loggers.items():
        VARIANTS[name](logger, {"loss": torch.tensor(0.0), "epoch": 0}, -1)
        _flush(logger)
    order = ["none", *VARIANTS]
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
    batches = itertools.cycle(data)
    step = 0
    for block in range(blocks * len(order)):
        # every variant once per round, in a rotating order, so that slow phases of the machine hit all of them
        name = order[(block + block // len(order)) % len(order)]
        log = VARIANTS.get(name)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(every):
            x, y = next(batches)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i == 0 and log is not None:
                log(loggers[name], {"loss": loss.detach(), "epoch": 0}, step)
            step += 1
        out[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    for logger in loggers.values():
        logger.finalize("success")
    return out


# ------------------------------------------------------------------------------------------- (c) the writer
def writer_comparison(calls: int, trials: int) -> dict[str, float]:
    """Median microseconds per call of each encoder/framing pair, trials interleaved."""
    import io

    import _tfevents_handwritten as hand
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    def lib_encode(values, step, wall_time):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        return event_pb2.Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()

    encoders = {"hand-written": hand.encode_scalar_event, "library": lib_encode}
    values = [{"train_loss": 1.0 / (i + 1), "epoch": float(i // 100)} for i in range(calls)]
    # the bytes are the same whichever way they are made
    assert hand.encode_scalar_event(values[3], 3, 1.5) == lib_encode(values[3], 3, 1.5)

    def run(encode, framing):
        out = io.BytesIO()
        records = RecordWriter(out)
        start = time.perf_counter()
        if framing == "library":
            for step, v in enumerate(values):
                records.write(encode(v, step, 1.7e9))
        else:
            for step, v in enumerate(values):
                out.write(hand.frame_record(encode(v, step, 1.7e9)))
        return (time.perf_counter() - start) / calls * 1e6

    pairs = [(e, f) for e in encoders for f in ("hand-written", "library")]
    results: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for trial in range(trials):
        for pair in pairs[trial % len(pairs):] + pairs[: trial % len(pairs)]:
            results[pair].append(run(encoders[pair[0]], pair[1]))
    return {pair: _median(times) for pair, times in results.items()}


def import_cost(trials: int) -> dict[str, float]:
    """Median milliseconds to import each library piece in a fresh process (torch already imported)."""
    import subprocess

    pieces = {
        "event_pb2 + summary_pb2": "tensorboard.compat.proto.event_pb2, tensorboard.compat.proto.summary_pb2",
        "+ RecordWriter (framing, CRC)": "tensorboard.compat.proto.event_pb2, tensorboard.summary.writer.record_writer",
        "torch.utils.tensorboard (SummaryWriter)": "torch.utils.tensorboard",
    }
    out = {}
    for name, modules in pieces.items():
        times = []
        for _ in range(trials):
            code = f"import time, torch; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times.append(float(run.stdout.strip()) * 1e3)
        out[name] = _median(times)
    return out


def _median(values):
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="log calls per trial in (a)")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--blocks", type=int, default=400, help="blocks per variant in (b)")
    parser.add_argument("--every", type=int, default=50, help="steps per block in (b) (log_every_n_steps)")
    parser.add_argument("--only-writer", action="store_true", help="run only (c)")
    parser.add_argument("--skip-import", action="store_true", help="leave the import timings out of (c)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.only_writer:
        _print_writer(args)
        return

    root = tempfile.mkdtemp()
    try:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.trials} interleaved trials, medians\n")
        trials = [per_call(root, args.calls) for _ in range(args.trials)]
        print(f"(a) log_metrics({{'loss': tensor, 'epoch': 0}}, step), {args.calls} calls back to back + flush")
        print(f"    {'':8} {'wall us/call':>13} {'CPU us/call':>12}")
        for name in VARIANTS:
            wall = _median([t[name][0] for t in trials])
            cpu = _median([t[name][1] for t in trials])
            print(f"    {name:8} {wall:13.1f} {cpu:12.1f}")
        ratio = _median([t["before"][0] / t["after"][0] for t in trials])
        print(f"    after is {ratio:.1f}x faster (wall, median of per-trial ratios)\n")

        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)) for _ in range(256)]
        in_loop(root, data, args.every, 2)  # warm-up
        blocks = in_loop(root, data, args.every, args.blocks)
        none_walls = [w for w, _ in blocks["none"]]
        none_wall, none_cpu = statistics.mean(none_walls), statistics.mean(c for _, c in blocks["none"])
        print(f"(b) training loop, blocks of {args.every} steps (~{none_wall / args.every * 1e6:.0f} us a step without "
              f"logging) starting with one log call; {args.blocks} blocks per variant, interleaved")
        print("    extra us per block (= per log call) over a block without logging")
        print(f"    {'':8} {'wall mean':>10} {'(+- s.e.)':>10} {'wall median':>12} {'CPU mean':>9} {'wall us/step':>13} "
              f"{'wall %':>7}")
        for name in VARIANTS:
            walls = [w for w, _ in blocks[name]]
            extra_wall = (statistics.mean(walls) - none_wall) * 1e6
            error = math.hypot(statistics.stdev(walls) / math.sqrt(len(walls)),
                               statistics.stdev(none_walls) / math.sqrt(len(none_walls))) * 1e6
            extra_median = (statistics.median(walls) - statistics.median(none_walls)) * 1e6
            extra_cpu = (statistics.mean(c for _, c in blocks[name]) - none_cpu) * 1e6
            print(f"    {name:8} {extra_wall:10.1f} {error:10.1f} {extra_median:12.1f} {extra_cpu:9.1f} "
                  f"{extra_wall / args.every:13.2f} {extra_wall / (none_wall * 1e6) * 100:7.2f}")
        print()
        _print_writer(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _print_writer(args: argparse.Namespace) -> None:
    per_call = writer_comparison(args.calls, args.trials)
    print(f"(c) serialize + frame one event per log call ({{'train_loss', 'epoch'}}), {args.calls} calls, "
          f"{args.trials} interleaved trials, medians")
    print(f"    {'encoder':14} {'framing + CRC':14} {'us/call':>8}")
    for (encoder, framing), us in per_call.items():
        print(f"    {encoder:14} {framing:14} {us:8.2f}")
    if not args.skip_import:
        print("    one-off import in a fresh process after torch (ms, median):")
        for name, ms in import_cost(5).items():
            print(f"      {name:42} {ms:7.0f}")


if __name__ == "__main__":
    main()
