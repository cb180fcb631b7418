"""Strategies: where the module lives and how processes talk. Chosen once per Trainer.

A strategy's verbs: ``launch`` (start the processes and run the trainer's work in them), ``setup`` (place
and wrap the module), ``step_function`` (run a step through the wrapper so e.g. DDP's hooks fire),
``reduce``, ``all_gather``, ``broadcast``, ``barrier``, ``clip_grad_norm``, ``teardown``; and for
checkpoints ``save_checkpoint``/``load_checkpoint``/``remove_checkpoint`` (through its ``checkpoint_io`` plugin)
and ``load_optimizer_states``. Everything the trainer may ask
of a strategy is declared here with the single-process behaviour; subclasses override what changes with more
processes. A strategy never calls user hooks.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

from featherlight.io.async_checkpoint_io import AsyncCheckpointIO, PendingCheckpoint
from featherlight.io.checkpoint_io import CheckpointIO, TorchCheckpointIO, _WrappingCheckpointIO
from featherlight.io.state import optimizer_state_by_index, optimizer_state_to_device
from featherlight.utilities.rank_zero import share_rank_with_lightning_utilities

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.precision.precision import Precision


class Strategy:
    """Base class; the single-process behaviour. Subclasses override what changes with more processes."""

    strategy_name = "single_device"
    #: Evaluation may run under ``torch.inference_mode`` (FSDP cannot: it reuses gathered parameters).
    supports_inference_mode: bool = True
    #: Evaluation samplers pad so every rank runs every batch (FSDP's forward is a collective); else each sample
    #: goes to exactly one rank.
    pad_eval_samplers: bool = False
    _background_io: Optional[AsyncCheckpointIO] = None

    def __init__(self, device: Optional[torch.device] = None, checkpoint_io: Optional[CheckpointIO] = None) -> None:
        self._root_device = torch.device(device) if device is not None else torch.device("cpu")
        self._checkpoint_io: CheckpointIO = TorchCheckpointIO()
        # writes `checkpoint_io` on a background thread for `save_checkpoint_in_background` (made on first use)
        self._background_io: Optional[AsyncCheckpointIO] = None
        if checkpoint_io is not None:
            self.checkpoint_io = checkpoint_io
        self.precision: Optional["Precision"] = None
        self._lightning_module: Optional["LightningModule"] = None
        self.model: Optional[nn.Module] = None
        #: what ``LightningModule.optimizers()`` returns (set by the trainer when a fit configures its optimizers)
        self.lightning_optimizers: list = []
        self.num_nodes = 1

    def configure_devices(self, accelerator: str, device_ids: list[int], num_nodes: int) -> None:
        """Fill in what the Trainer's ``accelerator``/``devices``/``num_nodes`` flags decide (called once, by the
        Trainer, for a strategy instance it was given)."""

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """The plugin that writes, reads and removes checkpoint files (default :class:`TorchCheckpointIO`; set by
        ``Trainer(plugins=[...])``). A wrapper given without a plugin to wrap (``AsyncCheckpointIO()``) wraps the one
        in place."""
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, checkpoint_io: CheckpointIO) -> None:
        if not isinstance(checkpoint_io, CheckpointIO):
            raise TypeError(f"`checkpoint_io` must be a `CheckpointIO`, got {type(checkpoint_io).__name__}.")
        innermost = checkpoint_io  # wrappers may wrap wrappers: the last one decides what does the work
        while isinstance(innermost, _WrappingCheckpointIO) and innermost.checkpoint_io is not None:
            innermost = innermost.checkpoint_io
        if isinstance(innermost, _WrappingCheckpointIO):  # nothing to hand the work to yet: the plugin in place
            current = self._checkpoint_io
            while isinstance(current, _WrappingCheckpointIO) and current.checkpoint_io is not None:
                current = current.checkpoint_io
            if not isinstance(current, _WrappingCheckpointIO):
                innermost.checkpoint_io = current
        self._checkpoint_io = checkpoint_io

    # ---------------------------------------------------------------- ranks
    @property
    def root_device(self) -> torch.device:
        return self._root_device

    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def lightning_module(self) -> Optional["LightningModule"]:
        return self._lightning_module

    @property
    def distributed_sampler_kwargs(self) -> Optional[dict[str, Any]]:
        return None

    @property
    def parallel_device_ids(self) -> list[int]:
        """The indices of the devices this strategy runs on (``trainer.device_ids``)."""
        return [self.root_device.index or 0]

    # ---------------------------------------------------------------- lifecycle
    def launch(self, function: Any, *args: Any, trainer: Any = None) -> Any:
        """Run ``function(*args)`` (the trainer's whole run). Multi-process strategies start their
        processes here and return rank zero's result (``trainer`` is the Trainer running it)."""
        return function(*args)

    def setup_environment(self) -> None:
        """Prepare the process (process group, device selection) before the module is touched."""
        # `lightning_utilities` imported after featherlight: its rank_zero_only learns the rank now, not at a call
        share_rank_with_lightning_utilities()
        if self._root_device.type == "cuda":
            torch.cuda.set_device(self._root_device)

    def connect(self, module: "LightningModule") -> None:
        self._lightning_module = module
        self.model = module

    def setup(self, module: "LightningModule") -> None:
        """Convert the module to the precision's dtype, move it to the device and wrap it."""
        assert self.precision is not None
        self._lightning_module = module
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.model = module

    def teardown(self) -> None:
        """Release what ``setup`` created (and let the checkpoint IO plugin finish its writes); the module stays on
        its device like Lightning's does on CPU."""
        self.teardown_checkpoint_io()

    def teardown_checkpoint_io(self) -> None:
        """Wait for the checkpoints being written in the background, then tear down :attr:`checkpoint_io`.

        Raises:
            featherlight.utilities.exceptions.CheckpointError: a background write failed and nobody raised it yet
                (a warning instead while another exception propagates).
        """
        background, self._background_io = self._background_io, None
        try:
            if background is not None:
                background.finish()
        finally:
            self.checkpoint_io.teardown()

    # ---------------------------------------------------------------- steps
    def step_function(self, name: str) -> Any:
        """The callable the loop uses for ``name`` (e.g. ``"training_step"``), resolved once per run.
        In one process that is the module's own method; wrappers (DDP) return their forward path."""
        if getattr(type(self), name) is getattr(Strategy, name):
            return getattr(self._lightning_module, name)
        return getattr(self, name)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.training_step(*args, **kwargs)  # type: ignore[union-attr]

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.validation_step(*args, **kwargs)  # type: ignore[union-attr]

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.test_step(*args, **kwargs)  # type: ignore[union-attr]

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.predict_step(*args, **kwargs)  # type: ignore[union-attr]

    def pre_backward(self, loss: Tensor) -> None:
        """Called right before each backward (e.g. DDP prepares its reducer for manual optimization)."""

    def set_gradient_sync(self, sync: bool) -> None:
        """Whether the next backward synchronises gradients across processes. Automatic optimisation turns it
        off inside a gradient accumulation window and on for the batch that closes it (DDP all-reduces only
        then). One process has nothing to synchronise."""

    # ---------------------------------------------------------------- collectives (no-ops in one process)
    def reduce(self, tensor: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        return tensor

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        return tensor

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        return [obj]

    def barrier(self, name: Optional[str] = None) -> None:
        pass

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Tensor:
        """Clip by total norm without a host sync (the norm stays a tensor)."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def model_state_dict(self) -> dict[str, Any]:
        return self._lightning_module.state_dict()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- data
    def process_dataloader(self, loader: Any, prefix: str, trainer: Any) -> Any:
        """The loader this process reads for ``prefix`` ("train", "val", ...): the same one in one process; a
        copy with a distributed sampler in several."""
        return loader

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None
    ) -> Optional[PendingCheckpoint]:
        """Write ``checkpoint`` through :attr:`checkpoint_io` (atomically, by default); global rank zero writes
        (every rank calls this). Returns the plugin's :class:`PendingCheckpoint` when it writes in the background
        (``AsyncCheckpointIO``), else None (the file is written)."""
        if not self.is_global_zero:
            return None
        self._wait_for_background_writes()
        pending = self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        return pending if isinstance(pending, PendingCheckpoint) else None

    def save_checkpoint_in_background(
        self, checkpoint: dict[str, Any], filepaths: Sequence[Any], storage_options: Optional[Any] = None
    ) -> Optional[PendingCheckpoint]:
        """Snapshot ``checkpoint`` into host memory now and write it to each of ``filepaths`` in turn on a background
        thread, through :attr:`checkpoint_io` (see :class:`~featherlight.io.async_checkpoint_io.AsyncCheckpointIO`:
        one write at a time, the previous one is waited for first). Global rank zero writes (every rank calls this)
        and gets the :class:`PendingCheckpoint`; the other ranks get None."""
        if not self.is_global_zero:
            return None
        io = self.checkpoint_io
        if not isinstance(io, AsyncCheckpointIO):
            if self._background_io is None or self._background_io.checkpoint_io is not io:
                if self._background_io is not None:
                    self._background_io.finish()  # the plugin was replaced: its writes end first
                self._background_io = AsyncCheckpointIO(io)
            io = self._background_io
        return io.write_in_background(checkpoint, filepaths, storage_options=storage_options)

    def _wait_for_background_writes(self) -> None:
        # the plugin is never called from two threads at once; its errors are raised by whoever waits on the write
        if self._background_io is not None:
            self._background_io.wait_idle()

    def load_checkpoint(self, path: Any, weights_only: bool = True) -> dict[str, Any]:
        """Read a checkpoint to restore from, through :attr:`checkpoint_io`, tensors on the CPU (no code from the
        file runs unless ``weights_only=False``)."""
        self._wait_for_background_writes()
        # no map_location: Lightning's strategies call plugins as `(path, weights_only=...)`, and custom plugins are
        # written for that call (the default plugin puts tensors on the CPU)
        return self.checkpoint_io.load_checkpoint(path, weights_only=weights_only)

    def remove_checkpoint(self, filepath: Any) -> None:
        """Delete a checkpoint (file or sharded directory) through :attr:`checkpoint_io`, on global rank zero."""
        if self.is_global_zero:
            self._wait_for_background_writes()
            self.checkpoint_io.remove_checkpoint(filepath)

    def load_optimizer_states(self, checkpoint: dict[str, Any], optimizers: list, path: Any = None) -> None:
        """Load the checkpoint's optimizer states into ``optimizers`` and move them to this process's device."""
        module = self._lightning_module
        for opt, state in zip(optimizers, checkpoint.get("optimizer_states", [])):
            # FSDP checkpoints (sharded or full) key optimizer states by parameter name; torch wants positions
            opt.load_state_dict(optimizer_state_by_index(module, opt, state, path))
            optimizer_state_to_device(opt, self.root_device)

    def accumulated_grads(self, module: nn.Module) -> dict[str, Tensor]:
        """The gradients of an unfinished accumulation window, by parameter name, for a mid-window checkpoint."""
        return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}

    def restore_accumulated_grads(self, module: nn.Module, grads: dict[str, Tensor]) -> None:
        """Put back what :meth:`accumulated_grads` saved (on resume)."""
        params = dict(module.named_parameters())
        for name, grad in grads.items():
            if name in params:
                params[name].grad = grad.to(params[name].device)


class SingleDeviceStrategy(Strategy):
    """Everything in one process on one device."""


class ParallelStrategy(Strategy):
    """The base of the strategies that run one process per device (``DDPStrategy``, ``FSDPStrategy``).

    Code written for Lightning asks ``isinstance(trainer.strategy, ParallelStrategy)`` to learn whether the batch is
    split over processes, then reads ``num_processes`` (this node's processes) and ``parallel_devices``.
    """

    #: the devices of this node, one process each (``None`` until the Trainer's flags fill it in)
    parallel_devices: Optional[list[torch.device]] = None
    num_nodes: int = 1

    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices) if self.parallel_devices is not None else 0

    @property
    def distributed_sampler_kwargs(self) -> Optional[dict[str, Any]]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}
