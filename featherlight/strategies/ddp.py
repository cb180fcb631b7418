"""Data-parallel training on ``torch.distributed``: the process group, DDP, collectives.

``DDPStrategy.launch`` starts or joins the job's processes (``launch.py``: torchrun/SLURM jobs are joined,
``"ddp"`` runs the script again per rank, ``"ddp_spawn"``/``"ddp_fork"`` use ``torch.multiprocessing``). The
training step runs through ``DistributedDataParallel.__call__`` so DDP's gradient all-reduce fires;
evaluation and prediction call the LightningModule directly. Inside a gradient accumulation window the loop
turns DDP's gradient sync off (``set_gradient_sync``), so gradients are all-reduced once per window.

The process group is created by the first run of a process and kept for the later ones (``fit`` then
``test`` in one script reuse it; re-creating it would race on the rendezvous store); it is destroyed
at interpreter exit, and only if this process created it.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from featherlight.io.checkpoint_io import CheckpointIO
from featherlight.strategies.launch import (
    _REGISTRY,
    _first_slurm_host,
    elastic_attempt_store,
    env_job,
    join_job,
    launch_multiprocessing,
    start_children,
    stop_children_on_failure,
)
from featherlight.strategies.strategy import ParallelStrategy
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, set_global_rank

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

try:
    from torch.distributed.constants import default_pg_timeout as _DEFAULT_TIMEOUT
except ImportError:  # pragma: no cover
    _DEFAULT_TIMEOUT = timedelta(minutes=30)

# =============================================================================== the module DDP wraps
class _TrainingStepModule(nn.Module):
    """DDP wraps this: its ``forward`` is the LightningModule's ``training_step``, so calling the DDP
    module runs the step between DDP's pre-forward and post-forward (bucket preparation, buffers).

    ``forward`` is the module's bound ``training_step`` itself (no frame of ours per step); manual
    optimization wraps it to mark that backward already ran inside the step (``after_step``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.forward = module.training_step  # type: ignore[method-assign]

    def run_then(self, after_step: Callable[[], None]) -> None:
        """``forward`` calls ``after_step()`` once the training step returned."""
        step = self.module.training_step

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            after_step()
            return out

        self.forward = forward  # type: ignore[method-assign]


def _trainer_of(module: Any) -> Any:
    """The trainer running ``module``, or None."""
    try:
        return module.trainer
    except RuntimeError:  # LightningModule.trainer raises when there is none
        return None


_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM", "avg": "SUM", "product": "PRODUCT",
               "prod": "PRODUCT"}


# =============================================================================== the strategy
class DDPStrategy(ParallelStrategy):
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
        checkpoint_io: how checkpoint files are written and read (default: atomic ``torch.save``).
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
        checkpoint_io: Optional[CheckpointIO] = None,
        **ddp_kwargs: Any,
    ) -> None:
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise MisconfigurationException(
                f"`start_method={start_method!r}` is not supported; use 'popen', 'spawn', 'fork' or 'forkserver'."
            )
        super().__init__(checkpoint_io=checkpoint_io)
        self._accelerator = accelerator.lower() if isinstance(accelerator, str) else accelerator
        self.parallel_devices = list(parallel_devices) if parallel_devices is not None else None
        self.num_nodes = num_nodes
        self._process_group_backend = process_group_backend
        self._timeout = timeout
        #: how processes are started: "popen" (run the script again per rank), "spawn", "fork" or "forkserver"
        self.start_method = start_method
        self._ddp_kwargs = dict(ddp_kwargs, find_unused_parameters=find_unused_parameters)
        self._ddp_comm_hook = ddp_comm_hook
        self._ddp_comm_state = ddp_comm_state
        #: this worker's index on its node, in ``torch.multiprocessing`` workers (set by the launcher)
        self.process_index: Optional[int] = None
        self._job: Optional[dict[str, Any]] = None
        self._resolved: Optional[dict[str, Any]] = None  # ranks, fixed once this process joined its job
        self._batchnorm_layers: Optional[dict[str, nn.Module]] = None  # replaced by SyncBatchNorm for this fit

    # ---------------------------------------------------------------- configuration
    def configure_devices(self, accelerator: str, device_ids: list[int], num_nodes: int) -> None:
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
            self.configure_devices("cuda" if torch.cuda.is_available() else "cpu",
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

    def ranks(self) -> dict[str, Any]:
        """World size and ranks: the worker index in torch.multiprocessing workers, the environment in a
        launched job, else this process as local rank 0 of the job it is about to launch."""
        if self._resolved is not None:
            return self._resolved
        per_node = self.num_processes
        if self.process_index is not None:
            node = int(os.environ.get("NODE_RANK", 0))
            return {"kind": "mp", "world_size": per_node * self.num_nodes, "local_rank": self.process_index,
                    "node_rank": node, "global_rank": node * per_node + self.process_index,
                    "local_world_size": per_node}
        job = env_job()
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
        return self.ranks()["world_size"]

    @property
    def global_rank(self) -> int:
        return self.ranks()["global_rank"]

    @property
    def local_rank(self) -> int:
        return self.ranks()["local_rank"]

    @property
    def node_rank(self) -> int:
        return self.ranks()["node_rank"]

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
    def launch(self, function: Any, *args: Any, trainer: Any = None) -> Any:
        """Join the job this process is part of, or start it: run the script again for the other ranks
        (``"popen"``), or run ``function`` in ``torch.multiprocessing`` workers (``"spawn"``/``"fork"``)."""
        ranks = self.ranks()
        if ranks["kind"] is not None:
            join_job(ranks)
            return function(*args)
        if self.start_method != "popen":
            return launch_multiprocessing(self, function, args, trainer)
        start_children(self.num_processes, self.num_nodes)
        with stop_children_on_failure(self):  # a context, not a frame between the trainer and its loop
            return function(*args)

    def state_dict_for_parent(self, module: nn.Module) -> dict[str, Any]:
        """The weights a spawned rank 0 sends back to the process that called ``fit`` (FSDP gathers them)."""
        return module.state_dict()

    # ---------------------------------------------------------------- per-process setup
    def setup_environment(self) -> None:
        self._resolved = None
        ranks = self.ranks()
        self._resolved = dict(ranks, device=self._device_of(ranks["local_rank"]))
        set_global_rank(ranks["global_rank"])
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
        store = elastic_attempt_store(ranks["world_size"], self._timeout)
        if store is not None:
            kwargs["store"] = store
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
        trainer = _trainer_of(module)
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and trainer.sync_batchnorm:
            from featherlight.strategies.sync_batchnorm import _convert_sync_batchnorm

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
        super().teardown()
        if self._lightning_module is not None:
            self.model = self._lightning_module
            layers, self._batchnorm_layers = self._batchnorm_layers, None
            if layers:
                from featherlight.strategies.sync_batchnorm import _revert_sync_batchnorm

                # plain batch norm again: a later single-process run must not wait for other ranks
                _revert_sync_batchnorm(self._lightning_module, layers)

    # ---------------------------------------------------------------- steps
    def step_function(self, name: str) -> Any:
        """The training step is DDP's own ``__call__`` (nothing of ours per step); the others are the module's."""
        from torch.nn.parallel import DistributedDataParallel

        if name != "training_step" or not isinstance(self.model, DistributedDataParallel):
            return super().step_function(name)
        ddp = self.model
        module = self._lightning_module
        if module.automatic_optimization:  # type: ignore[union-attr]
            return ddp
        return self._manual_training_step(ddp, ddp.module)

    def set_gradient_sync(self, sync: bool) -> None:
        """DDP all-reduces gradients in the next backward only when ``sync`` (the loop turns it off inside an
        accumulation window)."""
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(self.model, DistributedDataParallel):
            self.model.require_backward_grad_sync = sync

    def _manual_training_step(self, ddp: Any, wrapper: _TrainingStepModule) -> Callable:
        """Manual optimization calls ``backward`` inside ``training_step``, i.e. inside DDP's forward. The
        reducer is prepared before each backward (:meth:`pre_backward`), and DDP's post-forward must not
        prepare it again once the step returns."""

        def inside() -> None:
            ddp.require_backward_grad_sync = False

        wrapper.run_then(inside)

        def manual_step(*args: Any, **kwargs: Any) -> Any:
            try:
                return ddp(*args, **kwargs)
            finally:
                ddp.require_backward_grad_sync = True

        return manual_step

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
            from torch.distributed.nn.functional import all_gather

            return torch.stack(all_gather(tensor, group=group))
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

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not dist.is_available() or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

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

__all__ = ["DDPStrategy"]
