"""Data-parallel training on ``torch.distributed``: process launch, the process group, DDP, collectives.

How processes come to be (``DDPStrategy.launch``):

* already inside a launched job (``torchrun``, SLURM with several tasks, or a process this module
  started): join the existing job, nothing is launched;
* ``start_method="popen"`` (``strategy="ddp"``): this process becomes local rank 0 and starts the same
  command line (``sys.argv`` with ``sys.executable``) once per other local rank, with ``MASTER_ADDR``,
  ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` and ``RANK`` set;
* ``start_method="spawn"``/``"fork"`` (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``): the trainer's run
  happens in ``torch.multiprocessing`` workers; rank 0's results (return value, weights, metrics,
  trainer state, callback state) come back to the calling process.

Failures end the job quickly: the rank-0 launcher watches its children (a failed child stops the
rest and rank 0), children exit when the launcher disappears, and rank 0 stops its children when it
raises. The training step runs through ``DistributedDataParallel.__call__`` so DDP's gradient
all-reduce fires; evaluation and prediction call the LightningModule directly.

The process group is created by the first run of a process and kept for the later ones (``fit`` then
``test`` in one script reuse it; re-creating it would race on the rendezvous store); it is destroyed
at interpreter exit, and only if this module created it.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from featherlight.strategies.strategy import Strategy
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_only

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

try:
    from torch.distributed.constants import default_pg_timeout as _DEFAULT_TIMEOUT
except ImportError:  # pragma: no cover
    _DEFAULT_TIMEOUT = timedelta(minutes=30)

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


def _env_job() -> Optional[dict[str, Any]]:
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


# =============================================================================== the module DDP wraps
class _TrainingStepModule(nn.Module):
    """DDP wraps this: its ``forward`` is the LightningModule's ``training_step``, so calling the DDP
    module runs the step between DDP's pre-forward and post-forward (bucket preparation, buffers)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.after_step: Optional[Callable[[], None]] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module.training_step(*args, **kwargs)
        if self.after_step is not None:
            self.after_step()
        return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _AllGather(torch.autograd.Function):
    """Stack every rank's tensor; each rank's input gets the summed gradient of its slice."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, tensor.contiguous(), group=group)
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None


class _GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm synchronised across ranks for CPU tensors (torch's ``SyncBatchNorm`` accepts accelerator
    tensors only, and DDP refuses it on CPU modules).

    The batch statistics are computed over every rank with autograd-aware all-reduces, so gradients
    flow through them as with torch's CUDA kernel. In eval mode, or without a process group, it is plain batch norm.
    """

    process_group: Any = None

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.tensor([x.numel() // channels], dtype=x.dtype)
        # two passes (mean, then squared deviations) keep the variance as accurate as one process's
        first = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        total = first[-1]
        mean = first[:channels] / total
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims), group) / total
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                n = total.detach()
                unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def _convert_sync_batchnorm(module: nn.Module, device: torch.device) -> dict[str, nn.Module]:
    """Batch norm layers synchronised across ranks: torch's SyncBatchNorm on accelerators, ours on CPU.

    Returns the replaced layers by name. They share their parameters and buffers with their replacements,
    so putting them back (:func:`_revert_sync_batchnorm`) keeps everything the run learned.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    originals = {name: m for name, m in module.named_modules()
                 if name and isinstance(m, _BatchNorm) and not isinstance(m, (nn.SyncBatchNorm, _GlooSyncBatchNorm))}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    assert converted is module  # a LightningModule is never itself a batch norm layer
    if device.type == "cpu":
        for m in module.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = _GlooSyncBatchNorm  # same attributes; only forward differs
    return originals


def _revert_sync_batchnorm(module: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, layer in originals.items():
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, layer)


_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM", "avg": "SUM", "product": "PRODUCT",
               "prod": "PRODUCT"}


# =============================================================================== the strategy
class DDPStrategy(Strategy):
    """Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``.

    Args:
        accelerator: ``"cpu"`` or ``"cuda"``; filled in from the Trainer's flags when ``None``.
        parallel_devices: the devices of this node, one process each; from ``Trainer(devices=...)`` when ``None``.
        num_nodes: number of machines (the Trainer's ``num_nodes`` wins).
        process_group_backend: ``"nccl"`` (default on CUDA), ``"gloo"`` (default on CPU), ...
        timeout: collective timeout of the process group.
        start_method: ``"popen"`` (run the script again per rank), ``"spawn"`` or ``"fork"``.
        find_unused_parameters: passed to DDP; needed when some parameters get no gradient in a step.
        ddp_comm_hook / ddp_comm_state: a DDP communication hook to register (e.g. fp16 compression).
        **ddp_kwargs: any other ``DistributedDataParallel`` argument (``static_graph``, ``bucket_cap_mb``, ...).
    """

    strategy_name = "ddp"

    def __init__(
        self,
        accelerator: Optional[str] = None,
        parallel_devices: Optional[list[torch.device]] = None,
        num_nodes: int = 1,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = _DEFAULT_TIMEOUT,
        start_method: str = "popen",
        find_unused_parameters: bool = False,
        ddp_comm_hook: Optional[Callable] = None,
        ddp_comm_state: Optional[object] = None,
        **ddp_kwargs: Any,
    ) -> None:
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise MisconfigurationException(
                f"`start_method={start_method!r}` is not supported; use 'popen', 'spawn', 'fork' or 'forkserver'."
            )
        super().__init__()
        self._accelerator = accelerator.lower() if isinstance(accelerator, str) else accelerator
        self.parallel_devices = list(parallel_devices) if parallel_devices is not None else None
        self.num_nodes = num_nodes
        self._process_group_backend = process_group_backend
        self._timeout = timeout
        self._start_method = start_method
        self._ddp_kwargs = dict(ddp_kwargs, find_unused_parameters=find_unused_parameters)
        self._ddp_comm_hook = ddp_comm_hook
        self._ddp_comm_state = ddp_comm_state
        self._mp_rank: Optional[int] = None  # set in torch.multiprocessing workers
        self._job: Optional[dict[str, Any]] = None
        self._resolved: Optional[dict[str, Any]] = None  # ranks, fixed once this process joined its job

    # ---------------------------------------------------------------- configuration
    def _configure(self, accelerator: str, device_ids: list[int], num_nodes: int) -> None:
        """Fill in what the Trainer's flags decide (called by the Trainer once)."""
        if self._accelerator is None:
            self._accelerator = accelerator
        if self._accelerator == "mps":
            raise MisconfigurationException("Distributed training on MPS is not supported by torch.distributed.")
        if self.parallel_devices is None:
            if self._accelerator == "cuda":
                self.parallel_devices = [torch.device("cuda", i) for i in device_ids]
            else:
                self.parallel_devices = [torch.device("cpu")] * len(device_ids)
        self.num_nodes = num_nodes

    @property
    def _devices(self) -> list[torch.device]:
        if self.parallel_devices is None:
            self._configure("cuda" if torch.cuda.is_available() else "cpu",
                            list(range(max(torch.cuda.device_count(), 1))), self.num_nodes)
        return self.parallel_devices  # type: ignore[return-value]

    @property
    def num_processes(self) -> int:
        return len(self._devices)

    @property
    def parallel_device_ids(self) -> list[int]:
        devices = self._devices
        if devices and devices[0].type == "cuda":
            return [d.index or 0 for d in devices]
        return list(range(len(devices)))

    def _ranks(self) -> dict[str, Any]:
        """World size and ranks: the worker index in torch.multiprocessing workers, the environment in a
        launched job, else this process as local rank 0 of the job it is about to launch."""
        if self._resolved is not None:
            return self._resolved
        per_node = self.num_processes
        if self._mp_rank is not None:
            node = int(os.environ.get("NODE_RANK", 0))
            return {"kind": "mp", "world_size": per_node * self.num_nodes, "local_rank": self._mp_rank,
                    "node_rank": node, "global_rank": node * per_node + self._mp_rank, "local_world_size": per_node}
        job = _env_job()
        if job is not None:
            if self._job is None:
                self._check_job(job)
            self._job = job
            return job
        node = int(os.environ.get("NODE_RANK", 0))
        return {"kind": None, "world_size": per_node * self.num_nodes, "local_rank": 0, "node_rank": node,
                "global_rank": node * per_node, "local_world_size": per_node}

    def _check_job(self, job: dict[str, Any]) -> None:
        expected = self.num_processes * self.num_nodes
        local = job.get("local_world_size")
        if local is not None and local != self.num_processes:
            raise MisconfigurationException(
                f"The launcher started {local} process(es) on this node (LOCAL_WORLD_SIZE), but the Trainer was "
                f"configured for devices={self.num_processes}. Make them agree, e.g. `torchrun --nproc_per_node="
                f"{self.num_processes}` or `Trainer(devices={local})`."
            )
        if job["world_size"] != expected:
            where = {"slurm": "SLURM (SLURM_NTASKS)", "torchelastic": "torchrun (WORLD_SIZE)"}.get(
                job["kind"], "the environment (WORLD_SIZE)")
            raise MisconfigurationException(
                f"{where} says this job has {job['world_size']} processes, but the Trainer was configured for "
                f"devices={self.num_processes} x num_nodes={self.num_nodes} = {expected}. Make them agree, e.g. "
                "`torchrun --nproc_per_node=N` with `Trainer(devices=N, num_nodes=M)`."
            )

    @property
    def world_size(self) -> int:
        return self._ranks()["world_size"]

    @property
    def global_rank(self) -> int:
        return self._ranks()["global_rank"]

    @property
    def local_rank(self) -> int:
        return self._ranks()["local_rank"]

    @property
    def node_rank(self) -> int:
        return self._ranks()["node_rank"]

    @property
    def root_device(self) -> torch.device:
        resolved = self._resolved
        if resolved is not None and "device" in resolved:
            return resolved["device"]  # read every batch: fixed once the process joined its job
        return self._device_of(self.local_rank)

    def _device_of(self, local: int) -> torch.device:
        devices = self._devices
        if devices[0].type == "cuda":
            if local >= len(devices):
                raise MisconfigurationException(
                    f"Local rank {local} has no device: `devices` lists {len(devices)} GPU(s) on this node."
                )
            return devices[local]
        return devices[0]

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def process_group_backend(self) -> str:
        if self._process_group_backend is not None:
            return self._process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    # ---------------------------------------------------------------- launching
    def launch(self, function: Any, *args: Any) -> Any:
        ranks = self._ranks()
        if ranks["kind"] is not None:
            launcher = os.environ.get(_LAUNCHER_PID_ENV)
            if launcher is not None and ranks["kind"] == "env" and ranks["local_rank"] != 0:
                _REGISTRY.watch_parent(int(launcher))
            return function(*args)
        if self._start_method == "popen":
            return self._launch_popen(function, args)
        return self._launch_multiprocessing(function, args)

    def _launch_popen(self, function: Any, args: tuple) -> Any:
        self._start_children()
        try:
            return function(*args)
        except BaseException as ex:
            # the other ranks would otherwise wait in a collective for this one until the timeout
            import traceback

            trace = "".join(traceback.format_exception(type(ex), ex, ex.__traceback__))
            _REGISTRY.publish_failure(f"rank {self.global_rank} raised {type(ex).__name__}: {ex}\n{trace[-3000:]}")
            _REGISTRY.kill_children()
            raise

    def _start_children(self) -> None:
        per_node = self.num_processes
        env = os.environ
        if "MASTER_PORT" not in env and self.num_nodes > 1:
            raise MisconfigurationException(
                "Training on several nodes without a launcher needs MASTER_ADDR, MASTER_PORT and NODE_RANK set on "
                "every node (or use torchrun / SLURM)."
            )
        node_rank = int(env.get("NODE_RANK", 0))
        env["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
        env["MASTER_PORT"] = env.get("MASTER_PORT") or str(_free_port())
        env["NODE_RANK"] = str(node_rank)
        env["WORLD_SIZE"] = str(per_node * self.num_nodes)
        env["LOCAL_WORLD_SIZE"] = str(per_node)
        command = _script_command() if per_node > 1 else []
        _REGISTRY.register_exit()
        if self.num_nodes > 1:
            _REGISTRY.nodes = (node_rank, self.num_nodes)
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

    def _launch_multiprocessing(self, function: Any, args: tuple) -> Any:
        import torch.multiprocessing as mp

        if self._start_method == "fork" and self._devices[0].type == "cuda" and torch.cuda.is_initialized():
            raise MisconfigurationException(
                "`strategy='ddp_fork'`/'ddp_notebook' cannot fork once CUDA has been initialised in the main "
                "process. Do not touch CUDA before `trainer.fit` (or use `strategy='ddp_spawn'`)."
            )
        if self.num_nodes > 1 and "MASTER_PORT" not in os.environ:
            raise MisconfigurationException("Multi-node `ddp_spawn` needs MASTER_ADDR, MASTER_PORT and NODE_RANK set.")
        os.environ["MASTER_ADDR"] = os.environ.get("MASTER_ADDR", "127.0.0.1")
        if self.num_nodes == 1:
            # a fresh port per launch: the workers of a previous run may still hold the last one
            os.environ["MASTER_PORT"] = str(_free_port())
        with tempfile.TemporaryDirectory(prefix="featherlight_spawn_") as tmp:
            result_path = os.path.join(tmp, "rank0.pt")
            context = mp.start_processes(_mp_worker, args=(self, function, args, result_path),
                                         nprocs=self.num_processes, start_method=self._start_method, join=False)
            # when a worker fails the others are stopped at once (torch's default waits 30 s after SIGTERM,
            # which a worker blocked in a collective does not act on)
            while not context.join(grace_period=_POLL_INTERVAL_S):
                pass
            return self._recover_results(function, result_path)

    # ---------------------------------------------------------------- per-process setup
    def setup_environment(self) -> None:
        self._resolved = None
        ranks = self._ranks()
        self._resolved = dict(ranks, device=self._device_of(ranks["local_rank"]))
        rank_zero_only.rank = ranks["global_rank"]  # type: ignore[attr-defined]
        if ranks["kind"] == "slurm":
            os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ.get("SLURM_NODELIST", "127.0.0.1")))
            job_id = os.environ.get("SLURM_JOB_ID", "0")
            os.environ.setdefault("MASTER_PORT", str(20000 + int(job_id) % 10000 if job_id.isdigit() else 29500))
        device = self.root_device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self._init_process_group(ranks)

    def _init_process_group(self, ranks: dict[str, Any]) -> None:
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this build of torch.")
        if dist.is_initialized():
            if dist.get_world_size() != ranks["world_size"] or dist.get_rank() != ranks["global_rank"]:
                raise MisconfigurationException(
                    f"A process group already exists with world size {dist.get_world_size()} and rank "
                    f"{dist.get_rank()}, but this strategy expects {ranks['world_size']} and {ranks['global_rank']}."
                )
            return
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise MisconfigurationException(
                "MASTER_ADDR and MASTER_PORT must be set to form the process group (launchers set them)."
            )
        kwargs: dict[str, Any] = {}
        if self._timeout is not None:
            kwargs["timeout"] = self._timeout
        dist.init_process_group(self.process_group_backend, rank=ranks["global_rank"],
                                world_size=ranks["world_size"], **kwargs)
        # kept across runs of this process (fit then test reuse it); destroyed at exit
        _REGISTRY.owns_process_group = True
        _REGISTRY.register_exit()
        _REGISTRY.start_node_watch()
        rank_zero_info(
            f"Initialized distributed: {ranks['world_size']} processes, backend {self.process_group_backend}."
        )

    def setup(self, module: "LightningModule") -> None:
        """Precision conversion, move, SyncBatchNorm (when fitting with ``sync_batchnorm``), DDP wrapper."""
        assert self.precision is not None
        self._lightning_module = module
        module = self.precision.convert_module(module)
        device = self.root_device
        module.to(device)
        trainer = getattr(module, "_trainer", None)
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and getattr(trainer, "sync_batchnorm", False):
            self._batchnorm_layers = _convert_sync_batchnorm(module, device)
        self._lightning_module = module
        if fitting:
            self.model = self._wrap_ddp(module)
        else:
            # no DDP wrapper outside fit; the ranks still start from rank 0's weights, as DDP would make them
            self._sync_module_states(module)
            self.model = module

    def _wrap_ddp(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = self.root_device
        device_ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(_TrainingStepModule(module), device_ids=device_ids, **self._ddp_kwargs)
        if self._ddp_comm_hook is not None:
            ddp.register_comm_hook(state=self._ddp_comm_state, hook=self._ddp_comm_hook)
        return ddp

    def _sync_module_states(self, module: nn.Module) -> None:
        tensors = [t.detach() for t in list(module.parameters()) + list(module.buffers())]
        if not tensors or self.world_size == 1:
            return
        broadcast = getattr(dist, "_broadcast_coalesced", None)
        if broadcast is not None:
            broadcast(dist.group.WORLD, tensors, 250 * 1024 * 1024, 0)
        else:  # pragma: no cover
            for t in tensors:
                dist.broadcast(t, 0)

    def teardown(self) -> None:
        """Unwrap DDP. The process group stays up for later runs in this process and is destroyed at exit."""
        if self._lightning_module is not None:
            self.model = self._lightning_module
            layers = self.__dict__.pop("_batchnorm_layers", None)
            if layers:
                # plain batch norm again: a later single-process run must not wait for other ranks
                _revert_sync_batchnorm(self._lightning_module, layers)
        patched = self.__dict__.pop("_trainer_patched", None)
        if patched is not None:
            patched.__dict__.pop("_backward", None)

    # ---------------------------------------------------------------- steps
    def step_function(self, name: str) -> Any:
        from torch.nn.parallel import DistributedDataParallel

        if name != "training_step" or not isinstance(self.model, DistributedDataParallel):
            return super().step_function(name)
        ddp = self.model
        module = self._lightning_module
        wrapper: _TrainingStepModule = ddp.module  # type: ignore[assignment]
        if not module.automatic_optimization:  # type: ignore[union-attr]
            return self._manual_training_step(ddp, wrapper)
        wrapper.after_step = None
        trainer = module.trainer  # type: ignore[union-attr]
        scheduled = any(getattr(cb, "_sets_accumulate_grad_batches", False) for cb in trainer.callbacks)
        if trainer.accumulate_grad_batches == 1 and not scheduled:
            return ddp  # DDP's own __call__: nothing of ours per step
        loop = trainer._loop

        def accumulating_step(*args: Any, **kwargs: Any) -> Any:
            # gradients are all-reduced only on the batch that closes an accumulation window
            accumulate = trainer.accumulate_grad_batches  # a callback may change it between epochs
            batch_idx = loop.batch_idx
            total = trainer.num_training_batches
            ddp.require_backward_grad_sync = (
                (batch_idx + 1) % accumulate == 0 or total == float("inf") or batch_idx + 1 >= total
            )
            try:
                return ddp(*args, **kwargs)
            finally:
                ddp.require_backward_grad_sync = True

        return accumulating_step

    def _manual_training_step(self, ddp: Any, wrapper: _TrainingStepModule) -> Callable:
        """Manual optimization calls ``backward`` inside ``training_step``, i.e. inside DDP's forward. The
        reducer is prepared before each backward (:meth:`pre_backward`), and DDP's post-forward must not
        prepare it again once the step returns."""
        if getattr(Strategy, "pre_backward", None) is None:
            self._route_backward_through_pre_backward()

        def inside() -> None:
            ddp.require_backward_grad_sync = False

        wrapper.after_step = inside

        def manual_step(*args: Any, **kwargs: Any) -> Any:
            try:
                return ddp(*args, **kwargs)
            finally:
                ddp.require_backward_grad_sync = True

        return manual_step

    def _route_backward_through_pre_backward(self) -> None:
        """Stopgap while the Trainer has no ``strategy.pre_backward`` call: this run's trainer calls it
        before each backward (an instance attribute, removed again in :meth:`teardown`)."""
        trainer = self._lightning_module.trainer  # type: ignore[union-attr]
        if "_backward" in trainer.__dict__:
            return
        backward = trainer._backward

        def backward_after_pre_backward(loss: Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
            self.pre_backward(loss)
            backward(loss, optimizer, *args, **kwargs)

        trainer._backward = backward_after_pre_backward
        self._trainer_patched = trainer

    @staticmethod
    def _prepare_reducer(ddp: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or not ddp.require_backward_grad_sync:
            return
        ddp.require_forward_param_sync = True
        tensors: list = []
        if output is not None and ddp.find_unused_parameters and not ddp.static_graph:
            from featherlight.utilities.apply_func import apply_to_collection

            apply_to_collection(output, Tensor, tensors.append)
        ddp.reducer._rebuild_buckets()
        ddp.reducer.prepare_for_backward(tensors)

    def pre_backward(self, loss: Tensor) -> None:
        """Called by the Trainer before each backward: manual optimization needs the reducer prepared."""
        from torch.nn.parallel import DistributedDataParallel

        module = self._lightning_module
        if isinstance(self.model, DistributedDataParallel) and module is not None and not module.automatic_optimization:
            self._prepare_reducer(self.model, loss)

    # ---------------------------------------------------------------- collectives
    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        """All-reduce ``tensor`` (a copy; the input is left alone). ``reduce_op``: mean, sum, max, min."""
        if not isinstance(tensor, Tensor) or not dist.is_available() or not dist.is_initialized():
            return tensor
        group = group if group is not None else dist.group.WORLD
        mean = False
        if isinstance(reduce_op, str):
            key = reduce_op.lower()
            if key not in _REDUCE_OPS:
                raise ValueError(f"reduce_op must be one of {sorted(_REDUCE_OPS)}, got {reduce_op!r}.")
            mean = key in ("mean", "avg")
            op = getattr(dist.ReduceOp, _REDUCE_OPS[key])
        else:
            op = reduce_op
        out = tensor.detach().clone() if tensor.requires_grad else tensor.clone()
        if mean and not out.is_floating_point():
            out = out.float()
        if out.dtype == torch.bool:
            out = out.int()
        dist.all_reduce(out, op=op, group=group)
        if mean:
            out = out / dist.get_world_size(group)
        return out

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        """Stack ``tensor`` from every rank along a new first dimension (differentiable with ``sync_grads``)."""
        if not dist.is_available() or not dist.is_initialized():
            return tensor
        group = group if group is not None else dist.group.WORLD
        tensor = tensor.contiguous()
        if sync_grads:
            return _AllGather.apply(tensor, group)
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, tensor, group=group)
        return torch.stack(gathered)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not dist.is_available() or not dist.is_initialized():
            return obj
        box = [obj]
        device = self.root_device if self.process_group_backend == "nccl" else None
        dist.broadcast_object_list(box, src=src, device=device)
        return box[0]

    def barrier(self, name: Optional[str] = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            return
        if self.process_group_backend == "nccl" and self.root_device.type == "cuda":
            dist.barrier(device_ids=[self.root_device.index])
        else:
            dist.barrier()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        if not dist.is_available() or not dist.is_initialized():
            return decision
        device = self.root_device if self.process_group_backend == "nccl" else torch.device("cpu")
        votes = torch.tensor(int(bool(decision)), device=device)
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        count = int(votes.item())
        return count == self.world_size if all else count > 0

    def model_state_dict(self) -> dict[str, Any]:
        return self._lightning_module.state_dict()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- data
    def process_dataloader(self, loader: Any, prefix: str, trainer: Any) -> Any:
        from featherlight.strategies.samplers import process_dataloader

        return process_dataloader(loader, prefix, trainer)

    # ---------------------------------------------------------------- spawn/fork results
    def _worker_payload(self, function: Any, output: Any) -> dict[str, Any]:
        """What rank 0 sends back to the process that called ``trainer.fit``."""
        from featherlight.utilities.apply_func import apply_to_collection

        def cpu(x: Any) -> Any:
            return apply_to_collection(x, Tensor, lambda t: t.detach().cpu())

        payload: dict[str, Any] = {"output": cpu(output)}
        trainer = getattr(function, "__self__", None)
        if trainer is None or not hasattr(trainer, "_loop"):
            return payload
        module = trainer.lightning_module
        payload["state_dict"] = cpu(self._state_dict_for_parent(module)) if module is not None else None
        payload["state"] = trainer.state
        payload["loop"] = trainer._loop
        payload["should_stop"] = trainer.should_stop
        payload["metrics"] = (cpu(dict(trainer._log.callback)), cpu(dict(trainer._log.logged)),
                              cpu(dict(trainer._log.pbar)))
        callbacks = {}
        for cb in trainer.callbacks:
            try:
                state = cb.state_dict()
            except Exception:  # a callback that cannot describe itself is not brought back
                continue
            if state:
                callbacks[cb.state_key] = cpu(state)
        payload["callbacks"] = callbacks
        return payload

    def _state_dict_for_parent(self, module: nn.Module) -> dict[str, Any]:
        return module.state_dict()

    def _recover_results(self, function: Any, path: str) -> Any:
        if not os.path.exists(path):
            return None
        payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by rank 0
        trainer = getattr(function, "__self__", None)
        if trainer is not None and "state" in payload:
            module = trainer.lightning_module
            if module is not None and payload.get("state_dict") is not None:
                module.load_state_dict(payload["state_dict"])
            trainer.state.fn = payload["state"].fn
            trainer.state.status = payload["state"].status
            trainer.state.stage = payload["state"].stage
            trainer._loop.__dict__.update(payload["loop"].__dict__)
            trainer.should_stop = payload["should_stop"]
            callback, logged, pbar = payload["metrics"]
            trainer._log.store = None
            trainer._log.callback, trainer._log.logged, trainer._log.pbar = callback, logged, pbar
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


def _mp_worker(process_idx: int, strategy: DDPStrategy, function: Any, args: tuple, result_path: str) -> None:
    """Body of a ``torch.multiprocessing`` worker: run the trainer's function as rank ``process_idx``."""
    strategy._mp_rank = process_idx
    ranks = strategy._ranks()
    os.environ.update(RANK=str(ranks["global_rank"]), LOCAL_RANK=str(process_idx),
                      WORLD_SIZE=str(ranks["world_size"]), NODE_RANK=str(ranks["node_rank"]))
    rank_zero_only.rank = ranks["global_rank"]  # type: ignore[attr-defined]
    trainer = getattr(function, "__self__", None)
    if trainer is not None:
        # a pickled LightningModule/datamodule travels without its trainer (spawn): attach them again
        for obj in (getattr(trainer, "lightning_module", None), getattr(trainer, "datamodule", None)):
            if obj is not None and getattr(obj, "_trainer", trainer) is None:
                obj.trainer = trainer
        module = getattr(trainer, "lightning_module", None)
        if module is not None and strategy._start_method != "fork":
            # torch.multiprocessing sends CPU tensors through shared memory: without a private copy every
            # worker (and the parent) would update the same parameter storage
            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    if tensor.device.type == "cpu" and tensor.is_shared():
                        tensor.data = tensor.data.clone()
    output = function(*args)
    payload = strategy._worker_payload(function, output) if ranks["global_rank"] == 0 else None
    if payload is not None:
        torch.save(payload, result_path)
    if _REGISTRY.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        _REGISTRY.owns_process_group = False


# =============================================================================== factory
def _make_distributed_strategy(name: Any, accelerator: str, device_ids: list[int], num_nodes: int) -> Strategy:
    """The strategy for a ``Trainer(strategy=<name>)`` string with more than one process."""
    if name == "fsdp":
        from featherlight.strategies.fsdp import FSDPStrategy

        strategy: Strategy = FSDPStrategy()
    elif name == "ddp_spawn":
        strategy = DDPStrategy(start_method="spawn")
    elif name in ("ddp_fork", "ddp_notebook"):
        strategy = DDPStrategy(start_method="fork")
    elif name == "ddp_find_unused_parameters_true":
        strategy = DDPStrategy(find_unused_parameters=True)
    elif name in ("ddp", "ddp_find_unused_parameters_false"):
        if _env_job() is None and _is_interactive():
            raise MisconfigurationException(
                f"`Trainer(strategy={name!r})` runs your script again in each process, which is not possible in an "
                "interactive environment (notebook, REPL, `python -c`). Use `strategy='ddp_notebook'` or "
                "'ddp_spawn', or run your code as a script."
            )
        strategy = DDPStrategy()
    else:  # "auto" with several devices
        fork = _env_job() is None and _is_interactive()
        strategy = DDPStrategy(start_method="fork" if fork else "popen")
    if accelerator == "mps":
        raise MisconfigurationException("Distributed training on MPS is not supported; use `devices=1`.")
    strategy._configure(accelerator, device_ids, num_nodes)  # type: ignore[attr-defined]
    if isinstance(strategy, DDPStrategy) and strategy._start_method != "popen":
        strategy.strategy_name = "ddp_spawn" if strategy._start_method == "spawn" else "ddp_fork"
    return strategy


__all__ = ["DDPStrategy"]
