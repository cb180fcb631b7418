"""Fully sharded data parallel training on FSDP2 (``torch.distributed.fsdp.fully_shard``).

Sharding comes from the user's ``configure_model`` (modules it already sharded are left as they are;
the root is sharded last if it was not) or from ``auto_wrap_policy`` (a set of module classes: every
instance is sharded, children before parents, then the root). Every step runs through the root
module's ``__call__`` (the step temporarily stands in for ``forward``) so FSDP's unshard/reshard hooks
fire even when ``training_step`` does not call ``self(...)``.

Checkpoints go through ``torch.distributed.checkpoint``: ``state_dict_type="sharded"`` (default) writes
a directory of shards plus ``meta.pt`` (everything but the weights and optimizer states);
``"full"`` gathers one ordinary checkpoint file on rank 0. The Trainer calls :meth:`save_checkpoint`
/ :meth:`load_checkpoint` on every rank.

Either kind loads with another world size: an FSDP run of any size reshards a sharded directory (DCP does)
or shards a full file, including one written by a single process without FSDP (optimizer states keyed by
position are renamed to parameter names first); a single process without FSDP reads a sharded directory
whole, without a process group (``featherlight.io.dcp``; ``Model.load_from_checkpoint`` too).
DCP files are read with an allow-list, never with plain ``pickle`` (see ``featherlight.io.dcp``).
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from featherlight.io.async_checkpoint_io import PendingCheckpoint
from featherlight.io.atomic import atomic_torch_save
from featherlight.io.checkpoint_io import CheckpointIO
from featherlight.io.load import load_checkpoint
from featherlight.io.state import match_compiled_keys, optimizer_state_by_name
from featherlight.strategies.ddp import _DEFAULT_TIMEOUT, DDPStrategy, _trainer_of
from featherlight.utilities.exceptions import CheckpointError, MisconfigurationException
from featherlight.utilities.rank_zero import WarningCache

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_SHARDING = {"FULL_SHARD": True, "SHARD_GRAD_OP": False, "HYBRID_SHARD": True, "_HYBRID_SHARD_ZERO2": False}
_META_NAME = "meta.pt"  # = featherlight.io.dcp.META_NAME (kept here so importing this module loads no DCP code)
_warnings = WarningCache()


class FSDPStrategy(DDPStrategy):
    """Shard parameters, gradients and optimizer states across ranks with FSDP2.

    Args:
        accelerator, parallel_devices, num_nodes, process_group_backend, timeout, start_method, checkpoint_io: as for
            :class:`~featherlight.strategies.DDPStrategy`.
        auto_wrap_policy: a set (or list) of ``nn.Module`` classes whose instances are sharded on their own,
            or a callable ``(module) -> bool``. ``None``: only the root (or what ``configure_model`` sharded).
        mixed_precision: a ``torch.distributed.fsdp.MixedPrecisionPolicy``; by default derived from the
            Trainer's precision (``bf16-mixed``/``16-mixed``: parameters in half, gradients reduced in float32).
        sharding_strategy: ``"FULL_SHARD"`` (reshard after forward), ``"SHARD_GRAD_OP"`` (keep parameters
            gathered between forward and backward) or ``"HYBRID_SHARD"`` (shard within a node, replicate
            across nodes).
        reshard_after_forward: overrides what ``sharding_strategy`` implies.
        cpu_offload: keep sharded parameters (and the optimizer step) on CPU.
        state_dict_type: ``"sharded"`` (default) or ``"full"``.
        device_mesh: a ``DeviceMesh`` to shard over (default: all ranks; 2-D for ``HYBRID_SHARD``).
        **fully_shard_kwargs: passed to every ``fully_shard`` call.
    """

    strategy_name = "fsdp"
    supports_inference_mode = False  # evaluation steps run under no_grad (see step_function)
    pad_eval_samplers = True  # every rank must run every forward: uneven evaluation batches would hang

    def __init__(
        self,
        accelerator: Optional[str] = None,
        parallel_devices: Optional[list[torch.device]] = None,
        num_nodes: int = 1,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = _DEFAULT_TIMEOUT,
        auto_wrap_policy: Optional[Union[set, list, tuple, Callable[[nn.Module], bool]]] = None,
        mixed_precision: Optional[Any] = None,
        sharding_strategy: str = "FULL_SHARD",
        reshard_after_forward: Optional[bool] = None,
        cpu_offload: bool = False,
        state_dict_type: str = "sharded",
        device_mesh: Optional[Any] = None,
        start_method: str = "popen",
        checkpoint_io: Optional[CheckpointIO] = None,
        **fully_shard_kwargs: Any,
    ) -> None:
        super().__init__(accelerator=accelerator, parallel_devices=parallel_devices, num_nodes=num_nodes,
                         process_group_backend=process_group_backend, timeout=timeout, start_method=start_method,
                         checkpoint_io=checkpoint_io)
        sharding_strategy = sharding_strategy.upper() if isinstance(sharding_strategy, str) else str(sharding_strategy)
        if sharding_strategy not in _SHARDING:
            raise MisconfigurationException(
                f"`sharding_strategy={sharding_strategy!r}` is not supported with FSDP2; use one of {sorted(_SHARDING)}."
            )
        if state_dict_type not in ("sharded", "full"):
            raise MisconfigurationException(f"`state_dict_type` must be 'sharded' or 'full', got {state_dict_type!r}.")
        self._spawn_state: Optional[dict[str, Any]] = None  # rank 0's full weights, gathered for a spawning parent
        self._weights_only = True  # how this run's checkpoint is read (its optimizer states too)
        self.auto_wrap_policy = auto_wrap_policy
        self.mixed_precision = mixed_precision
        self.sharding_strategy = sharding_strategy
        self.reshard_after_forward = (
            _SHARDING[sharding_strategy] if reshard_after_forward is None else reshard_after_forward
        )
        self.cpu_offload = cpu_offload
        self.state_dict_type = state_dict_type
        self._device_mesh = device_mesh
        self._fully_shard_kwargs = fully_shard_kwargs

    # ---------------------------------------------------------------- setup
    @property
    def device_mesh(self) -> Any:
        if self._device_mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            device_type = self.root_device.type
            if self.sharding_strategy in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
                per_node = self.world_size // self.num_nodes
                self._device_mesh = init_device_mesh(device_type, (self.num_nodes, per_node),
                                                     mesh_dim_names=("replicate", "shard"))
            else:
                self._device_mesh = init_device_mesh(device_type, (self.world_size,))
        return self._device_mesh

    def _mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.mixed_precision is not None:
            return self.mixed_precision
        precision = getattr(self.precision, "precision", "32-true")
        if precision == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def _shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        kwargs = dict(mesh=self.device_mesh, reshard_after_forward=self.reshard_after_forward,
                      mp_policy=self._mp_policy(), offload_policy=CPUOffloadPolicy() if self.cpu_offload
                      else OffloadPolicy())
        kwargs.update(self._fully_shard_kwargs)
        return kwargs

    def _wraps(self, module: nn.Module) -> bool:
        policy = self.auto_wrap_policy
        if policy is None:
            return False
        if isinstance(policy, (set, list, tuple, frozenset)):
            return isinstance(module, tuple(policy))
        return bool(policy(module))

    def setup(self, module: "LightningModule") -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        assert self.precision is not None
        self._lightning_module = module
        module = self.precision.convert_module(module)
        self._use_sharded_grad_scaler()
        device = self.root_device
        already = any(isinstance(m, FSDPModule) for m in module.modules())
        on_meta = any(p.is_meta for p in module.parameters())
        if not on_meta and not self.cpu_offload:
            module.to(device)
        if not already and not on_meta:
            self._sync_module_states(module)  # every rank shards rank 0's initial values, as DDP would use
        if not isinstance(module, FSDPModule):
            kwargs = self._shard_kwargs()
            if not already:
                # children before their parents: reversed pre-order visits every child before its parent
                for sub in reversed(list(module.modules())):
                    if sub is not module and self._wraps(sub) and not isinstance(sub, FSDPModule):
                        fully_shard(sub, **kwargs)
            fully_shard(module, **kwargs)
        if on_meta:
            self._materialize(module, device)
        self._lightning_module = module
        self.model = module

    def _materialize(self, module: nn.Module, device: torch.device) -> None:
        """Parameters created on the meta device (in ``configure_model``) get memory and their initial values."""
        module.to_empty(device=device)
        with torch.no_grad():
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset) and sub is not module:
                    reset()

    def _use_sharded_grad_scaler(self) -> None:
        """16-mixed: GradScaler's inf check must agree across ranks, which ShardedGradScaler's does."""
        scaler = getattr(self.precision, "scaler", None)
        if scaler is None or getattr(self.precision, "precision", None) != "16-mixed":
            return
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        if not isinstance(scaler, ShardedGradScaler):
            self.precision.scaler = ShardedGradScaler(device=self.root_device.type)  # type: ignore[union-attr]

    def teardown(self) -> None:
        """The module stays sharded (its process group stays up): later runs in this process reuse both."""
        self.teardown_checkpoint_io()
        if self.process_index is not None and self._lightning_module is not None and sys.exc_info()[0] is None:
            # a spawn/fork worker that succeeded (no collective on the failure path): gather the full weights
            # for the parent while the process group still exists
            self._spawn_state = self._full_state_dict(cpu_offload=True)

    # ---------------------------------------------------------------- steps
    def step_function(self, name: str) -> Any:
        """Every step runs through the root module's ``__call__`` so FSDP unshards (and reshards) its parameters."""
        module = self._lightning_module
        return self._redirect(module, getattr(module, name))

    def set_gradient_sync(self, sync: bool) -> None:
        """Gradients are reduce-scattered only on the batch that closes an accumulation window (read by FSDP
        during the backward that follows, so it is left set until the next step)."""
        module = self._lightning_module
        if module is not None and hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(sync)

    @staticmethod
    def _redirect(module: Any, method: Callable) -> Callable:
        def redirected(*args: Any, **kwargs: Any) -> Any:
            previous = module.__dict__.get("forward")

            def step_as_forward(*a: Any, **k: Any) -> Any:
                _restore(module, previous)  # the step may itself call self(...) = the real forward
                return method(*a, **k)

            module.forward = step_as_forward  # type: ignore[method-assign]
            try:
                if torch.is_inference_mode_enabled():
                    # FSDP's gathered parameters are reused by training: they must not become inference tensors
                    with torch.inference_mode(False), torch.no_grad():
                        return module(*args, **kwargs)
                return module(*args, **kwargs)
            finally:
                _restore(module, previous)

        return redirected

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Tensor:
        """Clip by the global norm over every rank's shards (DTensor gradients reduce it across the mesh)."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        full = getattr(norm, "full_tensor", None)
        return full() if callable(full) else norm

    # ---------------------------------------------------------------- state
    def model_state_dict(self) -> dict[str, Any]:
        """This rank's shards (DTensors); :meth:`save_checkpoint` decides what is written."""
        return self._lightning_module.state_dict()  # type: ignore[union-attr]

    def _full_state_dict(self, cpu_offload: bool = True) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self._lightning_module,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))

    def state_dict_for_parent(self, module: nn.Module) -> dict[str, Any]:
        return self._spawn_state or {}

    def _optimizers(self) -> list:
        trainer = _trainer_of(self._lightning_module)
        return list(trainer.optimizers) if trainer is not None else []

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Union[str, os.PathLike],
                        storage_options: Optional[Any] = None) -> Optional[PendingCheckpoint]:
        """Write ``checkpoint`` (the Trainer's dict) to ``filepath``. Every rank must call this.

        ``"sharded"``: ``filepath`` becomes a directory of ``torch.distributed.checkpoint`` shards (weights and
        optimizer states, each rank writing its own) plus ``meta.pt`` with the rest of the dict, written by
        rank 0. ``"full"``: the weights and optimizer states are gathered and rank 0 writes one file.
        """
        path = os.fspath(filepath)
        if self.state_dict_type == "full":
            pending = super().save_checkpoint(self._full_checkpoint(checkpoint), path, storage_options=storage_options)
            self.barrier("fsdp_save_checkpoint")
            return pending
        self._save_sharded(self._average_window_grads(checkpoint), path, storage_options)
        return None

    def save_checkpoint_in_background(self, checkpoint: dict[str, Any], filepaths: Sequence[Any],
                                      storage_options: Optional[Any] = None) -> Optional[PendingCheckpoint]:
        """``"full"``: the weights and optimizer states are gathered now (every rank must call this) and rank 0 writes
        the file on a background thread. ``"sharded"``: written now, each path in turn, by
        ``torch.distributed.checkpoint`` (no background writes for sharded checkpoints yet)."""
        if self.state_dict_type == "full":
            return super().save_checkpoint_in_background(self._full_checkpoint(checkpoint), filepaths,
                                                         storage_options=storage_options)
        _warnings.warn("Sharded FSDP checkpoints (`FSDPStrategy(state_dict_type='sharded')`) are written synchronously: "
                       "background writes (`ModelCheckpoint(async_save=True)`, `AsyncCheckpointIO`) cover one-file "
                       "checkpoints only. Use `state_dict_type='full'` to write them in the background.")
        for path in filepaths:
            self.save_checkpoint(checkpoint, path, storage_options=storage_options)
        return None

    def _full_checkpoint(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint with the full weights and optimizer states gathered (on the CPU; every rank calls this)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        module = self._lightning_module
        checkpoint = dict(self._average_window_grads(checkpoint))
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        checkpoint["state_dict"] = get_model_state_dict(module, options=options)
        if "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = [get_optimizer_state_dict(module, o, options=options)
                                              for o in self._optimizers()]
        return checkpoint

    def _save_sharded(self, checkpoint: dict[str, Any], path: str, storage_options: Optional[Any]) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        import torch.distributed.checkpoint as dcp

        module = self._lightning_module
        optimizers = self._optimizers() if "optimizer_states" in checkpoint else []
        if storage_options is not None:
            raise TypeError("`storage_options` go to the checkpoint IO plugin, which writes full checkpoints only; "
                            "sharded FSDP checkpoints are written by torch.distributed.checkpoint. Use "
                            "`FSDPStrategy(state_dict_type='full')` to have the plugin write them.")
        if self.is_global_zero and os.path.isfile(path):
            os.remove(path)  # a full checkpoint of the same name: the directory takes its place
        self.barrier("fsdp_save_checkpoint_prepare")
        state: dict[str, Any] = {"model": get_model_state_dict(module)}
        if optimizers:
            state["optimizers"] = {str(i): get_optimizer_state_dict(module, o) for i, o in enumerate(optimizers)}
        dcp.save(state, checkpoint_id=path)
        meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        meta["featherlight_sharded"] = {"optimizers": len(optimizers), "world_size": self.world_size}
        if self.is_global_zero:
            atomic_torch_save(meta, os.path.join(path, _META_NAME))
        self.barrier("fsdp_save_checkpoint")

    # ---------------------------------------------------------------- unfinished accumulation windows
    def accumulated_grads(self, module: nn.Module) -> dict[str, Tensor]:
        """This rank's gradients of an unfinished accumulation window (for a mid-epoch checkpoint), by parameter
        name: full-size plain tensors, local and unreduced. Inside a window FSDP keeps them on its unsharded
        parameters (it reduce-scatters only on the batch that closes the window); the sharded parameters have none
        (unless gradients were zeroed instead of set to None). :meth:`save_checkpoint` averages them over the ranks.
        """
        from torch.distributed.fsdp import FSDPModule

        module = self._lightning_module
        names = {id(p): n for n, p in module.named_parameters()}
        out: dict[str, Tensor] = {}
        for sub in module.modules():
            if not isinstance(sub, FSDPModule):
                continue
            group = getattr(sub._get_fsdp_state(), "_fsdp_param_group", None)
            for fsdp_param in getattr(group, "fsdp_params", ()):
                grad = fsdp_param.unsharded_accumulated_grad
                if grad is None and hasattr(fsdp_param, "_unsharded_param"):
                    grad = fsdp_param._unsharded_param.grad
                name = names.get(id(fsdp_param.sharded_param))
                if grad is not None and name is not None:
                    grad = _local(grad)
                    out[name] = grad.detach().clone() if name not in out else out[name] + grad
        return out

    def _average_window_grads(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Replace each rank's unreduced window gradients in ``checkpoint`` by their mean over the ranks (plus the
        already reduced sharded gradients, if any), full-size plain tensors on CPU: what FSDP would have added to
        the sharded gradients had the window closed now. Identical on every rank, so the one copy rank 0 writes
        serves every rank of any world size on resume (``restore_accumulated_grads``). Collective: every rank calls it.
        """
        import torch.distributed as dist

        loop = checkpoint.get("featherlight_loop")
        local = loop.get("grads") if isinstance(loop, dict) else None
        device = self.root_device
        if not dist.is_available() or not dist.is_initialized() or self.world_size < 2:
            if local:
                checkpoint = dict(checkpoint)
                checkpoint["featherlight_loop"] = dict(loop, grads=self._plus_sharded(local), grads_averaged=True)
            return checkpoint
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        dist.all_reduce(flag)
        if flag.item() == 0:
            return checkpoint
        local = local or {}
        params = sorted(self._lightning_module.named_parameters())
        present = torch.tensor([1.0 if n in local else 0.0 for n, _ in params], device=device)
        dist.all_reduce(present)
        chosen = [(n, p) for (n, p), k in zip(params, present.tolist()) if k > 0]
        flat = torch.cat([local[n].to(device, torch.float32).reshape(-1) if n in local else
                          torch.zeros(p.numel(), device=device) for n, p in chosen]) if chosen else None
        grads: dict[str, Tensor] = {}
        if flat is not None:
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for n, p in chosen:
                grads[n] = flat[offset:offset + p.numel()].view(p.shape).to(p.dtype).cpu()
                offset += p.numel()
        checkpoint = dict(checkpoint)
        checkpoint["featherlight_loop"] = dict(loop, grads=self._plus_sharded(grads), grads_averaged=True)
        return checkpoint

    def _plus_sharded(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``grads`` plus the sharded parameters' (already reduced) gradients, gathered: full plain tensors."""
        out = dict(grads)
        for name, p in self._lightning_module.named_parameters():
            if p.grad is None:
                continue
            full = getattr(p.grad, "full_tensor", None)
            g = (full() if callable(full) else p.grad).detach().cpu()
            out[name] = g.clone() if name not in out else out[name] + g.to(out[name].dtype)
        return out

    def restore_accumulated_grads(self, module: nn.Module, grads: dict[str, Tensor]) -> None:
        """Put back a checkpoint's window gradients (full, the mean over the saving ranks) as the sharded
        parameters' gradients: FSDP adds the rest of the window's reduced gradients to them when it closes."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        for name, p in self._lightning_module.named_parameters():
            grad = grads.get(name)
            if grad is None:
                continue
            if tuple(grad.shape) != tuple(p.shape):
                from featherlight.utilities.rank_zero import rank_zero_warn

                rank_zero_warn(f"The checkpoint's accumulation window gradient for {name!r} has shape "
                               f"{tuple(grad.shape)}, the parameter {tuple(p.shape)}: it is dropped and this "
                               "window's first optimizer step differs from the uninterrupted run's.")
                continue
            if isinstance(p, DTensor):
                local = p.to_local()
                grad = grad.to(device=local.device, dtype=local.dtype)
                # every rank holds the whole tensor: each takes its own shard, no communication
                p.grad = distribute_tensor(grad, p.device_mesh, p.placements, src_data_rank=None)
            else:
                p.grad = grad.to(device=p.device, dtype=p.dtype)

    def load_checkpoint(self, filepath: Union[str, os.PathLike], weights_only: bool = True) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save_checkpoint` (either type, whatever this strategy's
        ``state_dict_type``) and load the weights into the sharded module. Every rank must call this.

        Returns the checkpoint dict; its ``state_dict`` holds the module's now-loaded (sharded) state, so
        loading it into the module again changes nothing. The optimizer states are loaded later, once the
        optimizers exist, by :meth:`load_optimizer_states`.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

        from featherlight.io.dcp import load_in_place

        module = self._lightning_module
        path = os.fspath(filepath)
        self._weights_only = weights_only  # the optimizer states that follow are read the same way
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, _META_NAME)):
                raise CheckpointError(f"{path!r} is a directory but not a sharded featherlight checkpoint (it has no "
                                      f"{_META_NAME}).", reason="corrupt")
            checkpoint = load_checkpoint(os.path.join(path, _META_NAME), map_location="cpu", weights_only=weights_only)
            saved = checkpoint.pop("featherlight_sharded", {}).get("optimizers", 0)
            state = {"model": get_model_state_dict(module)}
            load_in_place(state, path, weights_only)  # DCP reshards: any world size can have written it
            set_model_state_dict(module, state["model"])
            if saved:
                checkpoint["optimizer_states"] = [_ShardedOptimizerState(path, i) for i in range(saved)]
        else:  # one file: a full FSDP checkpoint, or one from any other strategy (e.g. a single process)
            checkpoint = self.checkpoint_io.load_checkpoint(path, weights_only=weights_only)
            if "state_dict" not in checkpoint:
                raise CheckpointError(f"{path!r} has no 'state_dict': it is not a model checkpoint.", reason="corrupt")
            set_model_state_dict(module, _match_names(module, checkpoint["state_dict"]),
                                 options=StateDictOptions(full_state_dict=True, strict=module.strict_loading))
        checkpoint["state_dict"] = module.state_dict()
        return checkpoint

    def load_optimizer_states(self, checkpoint: dict[str, Any], optimizers: list, path: Any = None) -> None:
        """Load the checkpoint's optimizer states into ``optimizers`` (every rank its shard)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        from featherlight.io.dcp import load_in_place

        module = self._lightning_module
        states = checkpoint.get("optimizer_states") or []
        for i, (optimizer, saved) in enumerate(zip(optimizers, states)):
            if isinstance(saved, _ShardedOptimizerState):
                state = {"optimizers": {str(saved.index): get_optimizer_state_dict(module, optimizer)}}
                load_in_place(state, saved.path, self._weights_only)
                set_optimizer_state_dict(module, optimizer, state["optimizers"][str(saved.index)])
            else:
                # a full state: keyed by parameter name (FSDP's own) or by position (a single-process checkpoint)
                set_optimizer_state_dict(module, optimizer, optimizer_state_by_name(module, optimizer, saved),
                                         options=StateDictOptions(full_state_dict=True))


class _ShardedOptimizerState(dict):
    """Stands for optimizer ``index``'s state inside the sharded checkpoint directory ``path``."""

    def __init__(self, path: str, index: int) -> None:
        super().__init__()
        self.path, self.index = path, index


def _match_names(module: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A full state dict with the module's own names (``torch.compile``'s ``_orig_mod.`` where it has them)."""
    return match_compiled_keys(module, state_dict)


def _local(tensor: Tensor) -> Tensor:
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _restore(module: nn.Module, previous: Any) -> None:
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous  # type: ignore[method-assign]


__all__ = ["FSDPStrategy"]
