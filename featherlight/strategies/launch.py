"""Starting the processes of a data-parallel job and watching them (used by ``DDPStrategy`` and ``FSDPStrategy``).

How processes come to be:

* already inside a launched job (``torchrun``, SLURM with several tasks, or a process this module
  started): join the existing job, nothing is launched (:func:`env_job` reads it from the environment);
* ``start_method="popen"`` (``strategy="ddp"``): this process becomes local rank 0 and starts the same
  command line (``sys.argv`` with ``sys.executable``) once per other local rank, with ``MASTER_ADDR``,
  ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` and ``RANK`` set (:func:`start_children`);
* ``start_method="spawn"``/``"fork"`` (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``): the trainer's run
  happens in ``torch.multiprocessing`` workers; rank 0's results (return value, weights, metrics,
  trainer state, callback state) come back to the calling process (:func:`launch_multiprocessing`).

Failures end the job quickly: the rank-0 launcher watches its children (a failed child stops the
rest and rank 0), children exit when the launcher disappears, and rank 0 stops its children when it
raises (:func:`stop_children_on_failure`). Nodes started by hand (no torchrun/SLURM) also watch each other
(``node_watch.py``).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from featherlight.utilities.apply_func import apply_to_collection
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, set_global_rank

_LAUNCHER_PID_ENV = "FEATHERLIGHT_LAUNCHER_PID"
_POLL_INTERVAL_S = 0.2
_KILL_GRACE_S = 3.0


# =============================================================================== process bookkeeping
class _ProcessRegistry:
    """What this process launched or created, cleaned up once at interpreter exit: child processes
    are waited for first (so rank 0 outlives the job it hosts), then the process group is destroyed."""

    def __init__(self) -> None:
        self.children: list[tuple[int, subprocess.Popen]] = []
        self.stopping = False
        self.owns_process_group = False
        self._registered = False
        self._observer: Optional[threading.Thread] = None
        self._parent_watch: Optional[threading.Thread] = None
        self.nodes: Optional[tuple[int, int]] = None  # (node_rank, num_nodes) of a multi-node job launched here
        self.node_watch: Any = None

    def register_exit(self) -> None:
        if not self._registered:
            self._registered = True
            atexit.register(self.at_exit)

    def at_exit(self) -> None:
        for _, proc in self.children:
            try:
                proc.wait()
            except Exception:  # pragma: no cover - best effort at exit
                pass
        if self.node_watch is not None:
            self.node_watch.finish()  # this node ended normally; node 0 keeps the store up for the others
        if self.owns_process_group and dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover
                pass
            self.owns_process_group = False

    # --------------------------------------------------------------- rank-0 launcher side
    def watch_children(self) -> None:
        """A daemon thread polls the children; when one fails the others are stopped and so is this process."""
        if self._observer is not None:
            return

        def observe() -> None:
            while True:
                running = False
                for rank, proc in self.children:
                    code = proc.poll()
                    if code is None:
                        running = True
                    elif code != 0 and not self.stopping:
                        self.stopping = True
                        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                        self.publish_failure(f"rank {rank} (pid {proc.pid}) {how}")
                        self.kill_children()
                        sys.stderr.write(
                            f"\n[featherlight] rank {rank} (pid {proc.pid}) {how}; stopping all processes of this "
                            "job (the rank's own output, if any, is above).\n"
                        )
                        sys.stderr.flush()
                        os._exit(code if code > 0 else 1)
                if not running:
                    return
                time.sleep(_POLL_INTERVAL_S)

        self._observer = threading.Thread(target=observe, name="featherlight-ddp-observer", daemon=True)
        self._observer.start()

    def kill_children(self) -> None:
        """Stop the children now. SIGKILL, not SIGTERM: a rank has failed, so nothing a child would do on a
        polite signal (e.g. save an interrupt checkpoint, a collective) can complete."""
        self.stopping = True
        alive = [p for _, p in self.children if p.poll() is None]
        for proc in alive:
            try:
                proc.kill()
            except OSError:  # pragma: no cover - already gone
                pass
        for proc in alive:
            try:
                proc.wait(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    # --------------------------------------------------------------- several nodes, launched by hand
    def start_node_watch(self) -> None:
        """On a node launcher of a multi-node job started without torchrun/SLURM: watch the other nodes."""
        if self.nodes is None or self.node_watch is not None:
            return
        from torch.distributed.distributed_c10d import _get_default_store

        from featherlight.strategies.node_watch import _NodeWatch

        self.node_watch = _NodeWatch(_get_default_store(), *self.nodes, stop_node=self.kill_children)
        self.node_watch.start()

    def publish_failure(self, message: str) -> None:
        if self.node_watch is not None:
            self.node_watch.publish_failure(message)

    # --------------------------------------------------------------- child side
    def watch_parent(self, launcher_pid: int) -> None:
        """In a child of the launcher: exit when the launcher is gone (it was killed, or crashed)."""
        if self._parent_watch is not None:
            return

        def watch() -> None:
            while True:
                time.sleep(0.5)
                if os.getppid() != launcher_pid:
                    sys.stderr.write("[featherlight] the launching process (rank 0) is gone; exiting.\n")
                    sys.stderr.flush()
                    os._exit(1)

        self._parent_watch = threading.Thread(target=watch, name="featherlight-ddp-parent-watch", daemon=True)
        self._parent_watch.start()


_REGISTRY = _ProcessRegistry()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_interactive() -> bool:
    """A notebook, a REPL or ``python -c``: there is no script to start again in other processes."""
    main = sys.modules.get("__main__")
    if hasattr(sys, "ps1") or main is None:
        return True
    if getattr(main, "__spec__", None) is not None:
        return False
    return not getattr(main, "__file__", None) or sys.argv[0] in ("", "-c")


def _script_command() -> list[str]:
    """The command that started this process, to start it again for the other ranks."""
    main = sys.modules.get("__main__")
    flags = [f"-W{opt}" for opt in sys.warnoptions]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, *flags, "-m", name, *sys.argv[1:]]
    script = sys.argv[0] if sys.argv else ""
    if _is_interactive() or not os.path.isfile(script):
        raise MisconfigurationException(
            "`Trainer(strategy='ddp')` starts the other processes by running your script again, but this process "
            "was not started from a script (a notebook, a REPL or `python -c`). Use `strategy='ddp_notebook'` "
            "(fork) or `strategy='ddp_spawn'`, or run your code as a script."
        )
    return [sys.executable, *flags, os.path.abspath(script), *sys.argv[1:]]


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``"gpu[003-005,9],login1"``."""
    nodelist = nodelist.strip()
    depth = 0
    first = nodelist
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            first = nodelist[:i]
            break
    if "[" not in first:
        return first
    prefix, rest = first.split("[", 1)
    item = rest.rstrip("]").split(",")[0]
    return prefix + item.split("-")[0]


def env_job() -> Optional[dict[str, Any]]:
    """Ranks of a job somebody else launched: torchrun (or this module's own children), or SLURM."""
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return {
            "kind": "torchelastic" if "TORCHELASTIC_RUN_ID" in env else "env",
            "world_size": int(env["WORLD_SIZE"]),
            "global_rank": int(env["RANK"]),
            "local_rank": int(env["LOCAL_RANK"]),
            "node_rank": int(env.get("GROUP_RANK", env.get("NODE_RANK", 0))),
            "local_world_size": int(env["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in env else None,
        }
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        try:
            ntasks = int(env["SLURM_NTASKS"])
        except ValueError:
            return None
        if ntasks > 1:
            return {
                "kind": "slurm",
                "world_size": ntasks,
                "global_rank": int(env["SLURM_PROCID"]),
                "local_rank": int(env.get("SLURM_LOCALID", 0)),
                "node_rank": int(env.get("SLURM_NODEID", 0)),
                "local_world_size": None,
            }
    return None


def elastic_attempt_store(world_size: int, timeout: Optional[timedelta]) -> Optional["dist.Store"]:
    """The store for this attempt of a torchrun job, or None where torch's ``env://`` handler is right.

    torchrun's agent keeps one TCP store for its whole life, across restarts, and ``env://`` connects the workers
    to it without a per-attempt prefix: keys the failed attempt wrote (each rank's gloo/NCCL address) are still
    there, a restarted rank reads its peer's old address, and the new group fails to connect or hangs (seen on a
    loaded machine after a rank was killed). A prefix per attempt keeps attempts apart: the restart count, and the
    world size, which a membership change alters.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout or timedelta(minutes=30))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"featherlight/attempt_{attempt}/world_{world_size}/", store)


# =============================================================================== launching
@contextlib.contextmanager
def stop_children_on_failure(strategy: Any) -> Iterator[None]:
    """Around rank 0's run in a job it launched: when it raises, the others learn why and are stopped (they would
    otherwise wait in a collective for this one until the timeout)."""
    try:
        yield
    except BaseException as ex:
        trace = "".join(traceback.format_exception(type(ex), ex, ex.__traceback__))
        _REGISTRY.publish_failure(f"rank {strategy.global_rank} raised {type(ex).__name__}: {ex}\n{trace[-3000:]}")
        _REGISTRY.kill_children()
        raise


def join_job(ranks: dict[str, Any]) -> None:
    """In a process of a job another launcher (or this module) started: exit when our launcher is gone."""
    launcher = os.environ.get(_LAUNCHER_PID_ENV)
    if launcher is not None and ranks["kind"] == "env" and ranks["local_rank"] != 0:
        _REGISTRY.watch_parent(int(launcher))


def start_children(num_processes: int, num_nodes: int) -> None:
    """Make this process local rank 0 of a job and start the node's other ranks by running the script again."""
    per_node = num_processes
    env = os.environ
    if "MASTER_PORT" not in env and num_nodes > 1:
        raise MisconfigurationException(
            "Training on several nodes without a launcher needs MASTER_ADDR, MASTER_PORT and NODE_RANK set on "
            "every node (or use torchrun / SLURM)."
        )
    node_rank = int(env.get("NODE_RANK", 0))
    env["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
    env["MASTER_PORT"] = env.get("MASTER_PORT") or str(_free_port())
    env["NODE_RANK"] = str(node_rank)
    env["WORLD_SIZE"] = str(per_node * num_nodes)
    env["LOCAL_WORLD_SIZE"] = str(per_node)
    command = _script_command() if per_node > 1 else []
    _REGISTRY.register_exit()
    if num_nodes > 1:
        _REGISTRY.nodes = (node_rank, num_nodes)
    for local_rank in range(1, per_node):
        child_env = dict(os.environ, LOCAL_RANK=str(local_rank), RANK=str(node_rank * per_node + local_rank))
        child_env[_LAUNCHER_PID_ENV] = str(os.getpid())
        proc = subprocess.Popen(command, env=child_env, stdin=subprocess.DEVNULL)
        _REGISTRY.children.append((node_rank * per_node + local_rank, proc))
    # this process is local rank 0 from now on: later runs in this script join the same job
    env["LOCAL_RANK"] = "0"
    env["RANK"] = str(node_rank * per_node)
    if _REGISTRY.children:
        _REGISTRY.watch_children()
        rank_zero_info(f"Launched {per_node - 1} more process(es): {' '.join(command)}")


def launch_multiprocessing(strategy: Any, function: Any, args: tuple, trainer: Any) -> Any:
    """Run ``function(*args)`` in ``torch.multiprocessing`` workers, one per rank of this node; rank 0's results
    come back to ``trainer`` in this process."""
    import torch.multiprocessing as mp

    if strategy.start_method == "fork" and strategy.root_device.type == "cuda" and torch.cuda.is_initialized():
        raise MisconfigurationException(
            "`strategy='ddp_fork'`/'ddp_notebook' cannot fork once CUDA has been initialised in the main "
            "process. Do not touch CUDA before `trainer.fit` (or use `strategy='ddp_spawn'`)."
        )
    if strategy.num_nodes > 1 and "MASTER_PORT" not in os.environ:
        raise MisconfigurationException("Multi-node `ddp_spawn` needs MASTER_ADDR, MASTER_PORT and NODE_RANK set.")
    os.environ["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if strategy.num_nodes == 1:
        # a fresh port per launch: the workers of a previous run may still hold the last one
        os.environ["MASTER_PORT"] = str(_free_port())
    with tempfile.TemporaryDirectory(prefix="featherlight_spawn_") as tmp:
        result_path = os.path.join(tmp, "rank0.pt")
        context = mp.start_processes(_mp_worker, args=(strategy, function, args, trainer, result_path),
                                     nprocs=strategy.num_processes, start_method=strategy.start_method, join=False)
        # when a worker fails the others are stopped at once (torch's default waits 30 s after SIGTERM,
        # which a worker blocked in a collective does not act on)
        while not context.join(grace_period=_POLL_INTERVAL_S):
            pass
        return _recover_results(trainer, result_path)


def _attached(obj: Any, trainer: Any) -> bool:
    """Whether a module or datamodule still has its trainer (a pickled one travels without it)."""
    try:
        return obj.trainer is not None
    except RuntimeError:  # LightningModule.trainer raises when there is none
        return False


def _mp_worker(process_idx: int, strategy: Any, function: Any, args: tuple, trainer: Any,
               result_path: str) -> None:
    """Body of a ``torch.multiprocessing`` worker: run the trainer's function as rank ``process_idx``."""
    strategy.process_index = process_idx
    ranks = strategy.ranks()
    os.environ.update(RANK=str(ranks["global_rank"]), LOCAL_RANK=str(process_idx),
                      WORLD_SIZE=str(ranks["world_size"]), NODE_RANK=str(ranks["node_rank"]))
    set_global_rank(ranks["global_rank"])
    if trainer is not None:
        # a pickled LightningModule/datamodule travels without its trainer (spawn): attach them again
        for obj in (trainer.lightning_module, trainer.datamodule):
            if obj is not None and not _attached(obj, trainer):
                obj.trainer = trainer
        module = trainer.lightning_module
        if module is not None and strategy.start_method != "fork":
            # torch.multiprocessing sends CPU tensors through shared memory: without a private copy every
            # worker (and the parent) would update the same parameter storage
            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    if tensor.device.type == "cpu" and tensor.is_shared():
                        tensor.data = tensor.data.clone()
    output = function(*args)
    if ranks["global_rank"] == 0:
        torch.save(_worker_payload(strategy, trainer, output), result_path)
    if _REGISTRY.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        _REGISTRY.owns_process_group = False


def _cpu(x: Any) -> Any:
    return apply_to_collection(x, Tensor, lambda t: t.detach().cpu())


def _worker_payload(strategy: Any, trainer: Any, output: Any) -> dict[str, Any]:
    """What rank 0 sends back to the process that called ``trainer.fit``."""
    payload: dict[str, Any] = {"output": _cpu(output)}
    if trainer is None:
        return payload
    module = trainer.lightning_module
    payload["state_dict"] = _cpu(strategy.state_dict_for_parent(module)) if module is not None else None
    payload["state"] = trainer.state
    payload["progress"] = trainer.progress
    payload["should_stop"] = trainer.should_stop
    results = trainer.results
    payload["metrics"] = (_cpu(dict(results.callback)), _cpu(dict(results.logged)), _cpu(dict(results.pbar)))
    callbacks = {}
    for cb in trainer.callbacks:
        try:
            state = cb.state_dict()
        except Exception:  # a callback that cannot describe itself is not brought back
            continue
        if state:
            callbacks[cb.state_key] = _cpu(state)
    payload["callbacks"] = callbacks
    return payload


def _recover_results(trainer: Any, path: str) -> Any:
    if not os.path.exists(path):
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by rank 0
    if trainer is not None and "state" in payload:
        module = trainer.lightning_module
        if module is not None and payload.get("state_dict") is not None:
            module.load_state_dict(payload["state_dict"])
        trainer.state.fn = payload["state"].fn
        trainer.state.status = payload["state"].status
        trainer.state.stage = payload["state"].stage
        trainer.progress.copy_from(payload["progress"])
        trainer.should_stop = payload["should_stop"]
        results = trainer.results
        results.store = None
        results.callback, results.logged, results.pbar = payload["metrics"]
        states = payload.get("callbacks", {})
        for cb in trainer.callbacks:
            state = states.get(cb.state_key)
            if not state:
                continue
            if "dirpath" in state and hasattr(cb, "dirpath"):
                cb.dirpath = state["dirpath"]
            cb.load_state_dict(state)
            if "current_score" in state and hasattr(cb, "current_score"):
                cb.current_score = state["current_score"]
    return payload["output"]
