"""What each experiment-tracker logger costs the training loop.

Run: ``python benchmarks/bench_loggers.py [--steps 2000] [--trials 7] [--every 50] [--ckpt-mb 40]``

(a) The loop: a tiny model (Linear(32, 32) + MSE, batch 64, SGD) trains ``--steps`` steps with
    ``log_every_n_steps=--every`` under each logger, and the same loop with ``logger=False`` in the same trial.
    Only the loop is timed (``on_train_start`` to ``on_train_end``): starting a run (wandb's service, a Comet
    experiment...) and :meth:`finalize`'s wait for queued sends are outside it; ``finalize`` is reported apart.
    Trials interleave the variants in a rotating order; the ratio is the median of the per-trial ratios to the
    logger-free loop. MLflow is measured against a file store, a SQLite store and a real ``mlflow server`` on
    localhost (started here); W&B, Comet and Neptune run offline. Libraries that are not installed are skipped.
(b) ``log_model``: a checkpoint of ``--ckpt-mb`` MB is saved (``torch.save`` through the atomic, fsynced write that
    ``trainer.save_checkpoint`` uses) and handed to ``after_save_checkpoint``, as ``ModelCheckpoint`` does. Reports the save, how long
    ``after_save_checkpoint`` blocked the loop, and how long the background upload took (waited for in finalize).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Callable, Optional

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("COMET_LOGGING_CONSOLE", "error")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import featherlight as L  # noqa: E402
from featherlight.loggers._tracking import _module_available  # noqa: E402

torch.set_num_threads(1)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 32)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class LoopTimer(L.Callback):
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def _loader(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(steps * 64, 32, generator=g), torch.randn(steps * 64, 32, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(root: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
        "--artifacts-destination", f"{root}/server-artifacts", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def logger_factories(root: str, server_uri: Optional[str]) -> dict[str, Callable[[int], Any]]:
    from featherlight.loggers import CSVLogger, TensorBoardLogger

    out: dict[str, Callable[[int], Any]] = {
        "CSVLogger": lambda i: CSVLogger(root, name=f"csv{i}"),
        "TensorBoardLogger": lambda i: TensorBoardLogger(root, name=f"tb{i}"),
    }
    if _module_available("mlflow"):
        from featherlight.loggers import MLFlowLogger

        out["MLFlowLogger file"] = lambda i: MLFlowLogger(f"e{i}", tracking_uri=f"file:{root}/mlruns")
        out["MLFlowLogger sqlite"] = lambda i: MLFlowLogger(f"e{i}", tracking_uri=f"sqlite:///{root}/mlflow.db")
        if server_uri:
            out["MLFlowLogger server"] = lambda i: MLFlowLogger(f"e{i}", tracking_uri=server_uri)
            out["MLFlowLogger server sync"] = lambda i: MLFlowLogger(
                f"e{i}", tracking_uri=server_uri, synchronous=True
            )
    if _module_available("wandb"):
        from featherlight.loggers import WandbLogger

        out["WandbLogger offline"] = lambda i: WandbLogger(save_dir=root, project="bench")
    if _module_available("comet_ml"):
        from featherlight.loggers import CometLogger

        out["CometLogger offline"] = lambda i: CometLogger(online=False, offline_directory=f"{root}/comet")
    if _module_available("neptune"):
        from featherlight.loggers import NeptuneLogger

        out["NeptuneLogger offline"] = lambda i: NeptuneLogger(
            mode="offline", project="bench/bench", capture_hardware_metrics=False, capture_stdout=False,
            capture_stderr=False, log_model_checkpoints=False,
        )  # fmt: skip
    return out


def _close(logger: Any) -> None:
    """End what the library keeps open between runs (each run of the benchmark starts a new one)."""
    name = type(logger).__name__
    experiment = getattr(logger, "_experiment", None) or getattr(logger, "_run_instance", None)
    if experiment is None:
        return
    for method in {"WandbLogger": "finish", "CometLogger": "end", "NeptuneLogger": "stop"}.get(name, "").split():
        getattr(experiment, method)()


def fit_once(logger: Any, steps: int, every: int, root: str) -> tuple[float, float]:
    timer = LoopTimer()
    trainer = L.Trainer(
        max_epochs=1, logger=logger if logger is not None else False, log_every_n_steps=every,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        default_root_dir=root, accelerator="cpu", devices=1,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Tiny(), _loader(steps))
    total = time.perf_counter() - start
    finalize_and_teardown = total - timer.seconds
    return timer.seconds, finalize_and_teardown


def loop_overhead(args: argparse.Namespace, root: str, server_uri: Optional[str]) -> None:
    factories = logger_factories(root, server_uri)
    names = ["none", *factories]
    ratios: dict[str, list[float]] = {n: [] for n in factories}
    loops: dict[str, list[float]] = {n: [] for n in names}
    tails: dict[str, list[float]] = {n: [] for n in names}
    fit_once(None, args.steps, args.every, root)  # warm-up
    counter = 0
    for trial in range(args.trials):
        order = names[trial % len(names):] + names[: trial % len(names)]
        times = {}
        for name in order:
            counter += 1
            logger = None if name == "none" else factories[name](counter)
            loop, tail = fit_once(logger, args.steps, args.every, root)
            if logger is not None:
                _close(logger)
            times[name] = loop
            loops[name].append(loop)
            tails[name].append(tail)
        for name in factories:
            ratios[name].append(times[name] / times["none"])
        print(f"  trial {trial + 1}/{args.trials} done", file=sys.stderr)
    base = statistics.median(loops["none"])
    print(f"(a) {args.steps} steps, log_every_n_steps={args.every}, {args.trials} interleaved trials, medians; "
          f"loop without a logger {base:.3f} s ({base / args.steps * 1e6:.0f} us/step)")
    print(f"    {'logger':26} {'loop ratio':>10} {'loop s':>8} {'after loop s':>13}")
    for name in factories:
        print(f"    {name:26} {statistics.median(ratios[name]):10.3f} {statistics.median(loops[name]):8.3f} "
              f"{statistics.median(tails[name]) - statistics.median(tails['none']):13.3f}")
    print("    (after loop: finalize, i.e. waiting for queued sends, and teardown, minus the logger-free run's)")


class _FakeCallback:
    """What a ModelCheckpoint reports to a logger after a save (save_top_k=-1: upload each save)."""

    monitor = None
    mode = "min"
    save_last = None
    save_top_k = -1
    save_weights_only = False

    def __init__(self, path: str) -> None:
        self.last_model_path = path
        self.best_model_path = path
        self.best_model_score = None
        self.current_score = None
        self.best_k_models = {path: None}


def log_model_stall(args: argparse.Namespace, root: str, server_uri: Optional[str]) -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(max(1, args.ckpt_mb // 4))])
    candidates = []
    if _module_available("mlflow"):
        from featherlight.loggers import MLFlowLogger

        candidates.append(("MLFlowLogger file", lambda: MLFlowLogger("ckpt", tracking_uri=f"file:{root}/mlruns-ckpt",
                                                                     log_model="all")))
        if server_uri:
            candidates.append(("MLFlowLogger server", lambda: MLFlowLogger("ckpt", tracking_uri=server_uri,
                                                                           log_model="all")))
    if _module_available("wandb"):
        from featherlight.loggers import WandbLogger

        # online mode is needed for log_model; WANDB_MODE=offline keeps the artifact in the offline run
        candidates.append(("WandbLogger offline", lambda: WandbLogger(save_dir=root, log_model="all")))
    from featherlight.io.atomic import atomic_write

    state = {"state_dict": model.state_dict(), "epoch": 0, "global_step": 0}
    mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print(f"\n(b) log_model: one checkpoint save + after_save_checkpoint, {args.trials} trials, medians")
    print(f"    {'logger':22} {'ckpt MB':>8} {'save s':>8} {'blocked s':>10} {'blocked/save':>13} {'upload s':>9}")
    for name, factory in candidates:
        saves, blocks, uploads = [], [], []
        logger = factory()
        _ = logger.experiment
        for trial in range(args.trials):
            path = os.path.join(root, f"ckpt-{name.replace(' ', '_')}-{trial}.ckpt")
            t0 = time.perf_counter()
            atomic_write(path, lambda f: torch.save(state, f))  # what a checkpoint save does, fsync included
            t1 = time.perf_counter()
            logger.after_save_checkpoint(_FakeCallback(path))
            t2 = time.perf_counter()
            logger._uploader.wait()
            t3 = time.perf_counter()
            saves.append(t1 - t0)
            blocks.append(t2 - t1)
            uploads.append(t3 - t2)
            os.remove(path)
        logger.finalize("success")
        _close(logger)
        print(f"    {name:22} {mb:8.0f} {statistics.median(saves):8.3f} {statistics.median(blocks):10.4f} "
              f"{statistics.median(blocks) / statistics.median(saves):13.3f} {statistics.median(uploads):9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--ckpt-mb", type=int, default=40)
    parser.add_argument("--no-server", action="store_true", help="skip the MLflow tracking server")
    parser.add_argument("--only", choices=["loop", "log_model"], help="run only (a) or (b)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench_loggers_")
    server = None
    try:
        server_uri = None
        if _module_available("mlflow") and not args.no_server:
            server, server_uri = start_mlflow_server(root)
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
        if args.only != "log_model":
            loop_overhead(args, root, server_uri)
        if args.only != "loop":
            log_model_stall(args, root, server_uri)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
