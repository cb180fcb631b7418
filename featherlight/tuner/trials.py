"""Tuner trials: a few steps of the trainer's own loop inside a running fit, with everything put back after.

What a trial may touch, and how it is put back
----------------------------------------------
* Swapped for fresh objects during the trials (the originals are never touched): the loop counters
  (``trainer.progress``), the logged values behind ``callback_metrics`` (``trainer.results``), the hook
  dispatcher (``trainer.hooks``), the optimisation step, the trainer state, the callbacks (only the search's
  own), the loggers (a ``DummyLogger`` if there were any) and the profiler (a pass-through one).
* Snapshotted and restored exactly: every attribute of the trainer, its strategy and precision
  plugin (values, and the contents of plain lists/dicts/sets and dataclasses they hold, so in-place
  edits are undone too; attributes added meanwhile are removed), the optimizers' and schedulers'
  ``state_dict``, the GradScaler, the module's weights (a CPU copy of ``state_dict()`` loaded back
  with ``load_state_dict``, plus non-persistent buffers), each tensor's device/dtype/requires_grad
  and gradient, every submodule's train/eval mode, ``model.trainer`` and ``datamodule.trainer``,
  and all RNG states (``isolate_rng``).
* Kept on purpose: the batch-size (or learning-rate) attribute, set to the search's result.

Each batch-size trial starts from the same weights and optimizer state, so every trial measures the
memory of the first ``steps_per_trial`` steps, optimizer state allocation included.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import torch

from featherlight.loggers.logger import DummyLogger
from featherlight.profilers.profiler import PassThroughProfiler
from featherlight.trainer import fit_loop
from featherlight.trainer.dispatch import HookDispatcher
from featherlight.trainer.logging import LogState
from featherlight.trainer.progress import LoopState
from featherlight.trainer.step import Optimization
from featherlight.utilities.rank_zero import rank_zero_warn
from featherlight.utilities.seed import _cuda_initialized, isolate_rng

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer


def quiet_trainer(trainer: "Trainer") -> None:
    """No logging, profiling or progress output while searching; fresh run state the originals never see."""
    # a DummyLogger keeps `self.logger` usable in user code (Lightning does the same)
    trainer.loggers = [DummyLogger()] if trainer.loggers else []
    trainer.profiler = PassThroughProfiler()
    trainer.progress = LoopState()
    trainer.results = LogState()
    trainer.state = copy.copy(trainer.state)
    trainer.hooks = HookDispatcher(trainer)


# ------------------------------------------------------------------------------------------ snapshots
_PLAIN_CONTAINERS = (list, dict, set)


class _AttrSnapshot:
    """An object's attributes as they are now, including the contents of plain lists/dicts/sets and of
    dataclass instances among them; ``restore`` puts back exactly this (same objects, same contents) and
    removes attributes added since. ``keys`` limits it to some attributes."""

    def __init__(self, obj: Any, keys: Optional[tuple[str, ...]] = None) -> None:
        self.obj = obj
        attrs = vars(obj)
        self.keys = keys
        self.values = {k: v for k, v in attrs.items() if keys is None or k in keys}
        self.contents: dict[str, Any] = {}
        for k, v in self.values.items():
            if type(v) in _PLAIN_CONTAINERS:
                self.contents[k] = copy.copy(v)
            elif dataclasses.is_dataclass(v) and not isinstance(v, type) and hasattr(v, "__dict__"):
                self.contents[k] = dict(vars(v))

    def restore(self) -> None:
        attrs = vars(self.obj)
        if self.keys is None:
            for k in [k for k in attrs if k not in self.values]:
                del attrs[k]
        else:
            for k in self.keys:
                if k not in self.values:
                    attrs.pop(k, None)
        for k, v in self.values.items():
            if k in self.contents:
                saved = self.contents[k]
                if type(v) is list:
                    v[:] = saved
                elif type(v) in (dict, set):
                    v.clear()
                    v.update(saved)
                else:
                    vars(v).clear()
                    vars(v).update(saved)
            attrs[k] = v


def _clone_to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor copied to CPU (so snapshots take no accelerator memory)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        try:
            out = type(obj)()
        except TypeError:
            out = {}
        for k, v in obj.items():
            out[k] = _clone_to_cpu(v)
        metadata = getattr(obj, "_metadata", None)  # state_dict versions, read by load_state_dict
        if metadata is not None:
            out._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [_clone_to_cpu(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_clone_to_cpu(v) for v in obj)
    try:
        return copy.deepcopy(obj)
    except Exception:  # an object that cannot be copied is kept as it is
        return obj


class _ModuleSnapshot:
    """The module's weights, buffers, gradients, placement, train/eval modes and trainer link."""

    _ATTRS = ("_trainer", "_device", "_dtype")

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.state = _clone_to_cpu(module.state_dict())
        self.modes = [(m, m.training) for m in module.modules()]
        self.params: list[tuple] = []
        self.buffers: list[tuple] = []
        for owner in module.modules():
            for key, p in owner._parameters.items():
                if p is None:
                    continue
                grad = None if p.grad is None else p.grad.detach().to("cpu", copy=True)
                self.params.append((owner, key, p, p.device, p.dtype, p.requires_grad, grad))
            persistent_skip = getattr(owner, "_non_persistent_buffers_set", set())
            for key, b in owner._buffers.items():
                if b is None:
                    continue
                value = b.detach().to("cpu", copy=True) if key in persistent_skip else None
                self.buffers.append((owner, key, b, b.device, b.dtype, value))
        self.attrs = _AttrSnapshot(module, self._ATTRS)

    def restore_weights(self) -> None:
        """Weights, buffers and gradients back (same tensor objects, devices and dtypes)."""
        with torch.no_grad():
            for owner, key, p, device, dtype, requires_grad, _ in self.params:
                if owner._parameters.get(key) is not p:
                    owner._parameters[key] = p
                if p.device != device or p.dtype != dtype:
                    p.data = p.data.to(device=device, dtype=dtype)
            for owner, key, b, device, dtype, _ in self.buffers:
                if owner._buffers.get(key) is not b:
                    owner._buffers[key] = b
                if b.device != device or b.dtype != dtype:
                    b.data = b.data.to(device=device, dtype=dtype)
            self.module.load_state_dict(self.state, strict=False)
            for _, _, b, _, _, value in self.buffers:
                if value is not None:
                    b.copy_(value)
        for _, _, p, _, _, requires_grad, grad in self.params:
            p.requires_grad_(requires_grad)
            p.grad = None if grad is None else grad.to(device=p.device, dtype=p.dtype, copy=True)

    def restore(self) -> None:
        self.restore_weights()
        for m, training in self.modes:
            m.training = training
        self.attrs.restore()


class _OptimizationSnapshot:
    """Optimizer and scheduler ``state_dict``s, copied to CPU."""

    def __init__(self, trainer: "Trainer") -> None:
        self.optimizers = [(o, _clone_to_cpu(o.state_dict())) for o in trainer.optimizers]
        self.schedulers = [(c.scheduler, _clone_to_cpu(c.scheduler.state_dict()))
                           for c in trainer.lr_scheduler_configs if hasattr(c.scheduler, "state_dict")]

    def restore(self) -> None:
        for scheduler, state in self.schedulers:
            scheduler.load_state_dict(copy.deepcopy(state))
        for optimizer, state in self.optimizers:
            optimizer.load_state_dict(copy.deepcopy(state))


class _Preserved:
    """Context manager: on exit, the trainer, its strategy/precision, the module, the datamodules and all
    RNG states are exactly as on entry (see the module docstring for the list)."""

    def __init__(self, trainer: "Trainer", module: torch.nn.Module, datamodules: list[Any] = ()) -> None:
        self.trainer = trainer
        self.module = module
        self.datamodules = [d for i, d in enumerate(datamodules) if all(d is not e for e in datamodules[:i])]

    def __enter__(self) -> "_Preserved":
        trainer = self.trainer
        self._cuda_was_initialized = _cuda_initialized()
        self._rng = isolate_rng()
        self._rng.__enter__()
        try:
            self._module = _ModuleSnapshot(self.module)
            self._optimization = _OptimizationSnapshot(trainer)
            precision = trainer.strategy.precision
            self._precision_state = _clone_to_cpu(precision.state_dict()) if precision is not None else None
            self._objects = [_AttrSnapshot(trainer), _AttrSnapshot(trainer.strategy)]
            for obj in (precision, getattr(precision, "scaler", None), trainer.progress, trainer.results,
                        trainer.state, trainer.hooks, trainer.data):
                if obj is not None and hasattr(obj, "__dict__"):
                    self._objects.append(_AttrSnapshot(obj))
            self._objects += [_AttrSnapshot(dm, ("trainer",)) for dm in self.datamodules]
        except BaseException:
            self._rng.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._optimization.restore()
            self._module.restore()
            for snapshot in reversed(self._objects):
                snapshot.restore()
            if self._precision_state:
                self.trainer.strategy.precision.load_state_dict(copy.deepcopy(self._precision_state))
        finally:
            self._rng.__exit__(None, None, None)
            _reset_fresh_cuda_rng(self._cuda_was_initialized)
            _free_memory()


def _reset_fresh_cuda_rng(was_initialized: bool) -> None:
    """When CUDA was first initialised during the search, its generators are back to the seed they had
    been given (the same as the CPU generator's, which ``torch.manual_seed`` sets for every device)."""
    if not was_initialized and _cuda_initialized():
        torch.cuda.manual_seed_all(torch.initial_seed())


# ------------------------------------------------------------------------------------------ trials
class _TrialSandbox(_Preserved):
    """Trials inside the trainer's running fit/evaluation: entered from a finder's hook, it swaps in fresh
    run state, the search's callbacks and trial flags; ``begin_trial`` resets the weights, optimizers and
    counters between trials; on exit everything is as on entry."""

    def __init__(self, trainer: "Trainer", callbacks: list[Any], flags: dict[str, Any]) -> None:
        super().__init__(trainer, trainer.lightning_module, [trainer.datamodule] if trainer.datamodule else [])
        self.callbacks = callbacks
        self.flags = flags
        self._trials = 0

    def __enter__(self) -> "_TrialSandbox":
        super().__enter__()
        try:
            trainer = self.trainer
            self._state = copy.copy(trainer.state)
            trainer.callbacks = list(self.callbacks)
            quiet_trainer(trainer)
            for name, value in self.flags.items():
                setattr(trainer, name, value)
            trainer.hooks.rebuild()
            if trainer.optimization is not None:
                # unprofiled: the user's profiler must not record the trials
                trainer.optimization = Optimization(trainer)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def begin_trial(self) -> None:
        trainer = self.trainer
        if self._trials:
            self._module.restore_weights()
            self._optimization.restore()
            if self._precision_state:
                trainer.strategy.precision.load_state_dict(copy.deepcopy(self._precision_state))
            _free_memory()
        self._trials += 1
        trainer.progress = LoopState()
        trainer.results = LogState()
        trainer.state = copy.copy(self._state)
        trainer.should_stop = False
        trainer.hooks.current = None
        trainer.train_dataloader = None
        trainer.data.train_loaded_epoch = None
        trainer.data.val_loaders = None


_EVAL_PREFIX = {"validate": "val", "test": "test", "predict": "predict"}


def _reload_dataloaders(trainer: "Trainer", fn: str, validation: bool = True) -> None:
    """Load the ``fn`` entry point's dataloaders now, built for the batch size just set (the Tuner leaves them
    on the trainer, as Lightning does)."""
    data = trainer.data
    if fn == "fit":
        trainer.train_dataloader = None
        data.train_loaded_epoch = None
        data.load_train()
        data.val_loaders = None
        if validation and data.val_enabled():
            data.ensure_val_loaders()
    else:
        data.load_eval(_EVAL_PREFIX[fn])


def _trial_flags(trainer: "Trainer", steps: int) -> dict[str, Any]:
    """Trainer flags for a trial of ``steps`` optimizer steps: every training batch, no validation, no
    time/step/epoch constraints from the real run, user schedulers off (automatic optimization)."""
    flags: dict[str, Any] = {
        "max_steps": steps,
        # at least one batch per epoch, so `steps` epochs are enough; bounded even if a loader is empty
        "max_epochs": steps,
        "min_steps": None,
        "min_epochs": None,
        "limit_train_batches": 1.0,
        "limit_val_batches": 0,
        "val_check_interval": 1.0,
        "check_val_every_n_epoch": 1,
        "reload_dataloaders_every_n_epochs": 0,
        "num_sanity_val_steps": 0,
    }
    module = trainer.lightning_module
    if module is not None and module.automatic_optimization:
        # the trial does not step them (in manual optimization `self.lr_schedulers()` must keep working)
        flags["lr_scheduler_configs"] = []
    return flags


def _run_fit_trial(trainer: "Trainer") -> None:
    with torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
        fit_loop.run_fit(trainer)


# ------------------------------------------------------------------------------------------ OOM
def _is_oom_error(exception: BaseException) -> bool:
    """Out of memory on CUDA, MPS, XPU or the CPU allocator (and cuDNN's variant of it)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    if oom_types and isinstance(exception, oom_types):
        return True
    if not isinstance(exception, RuntimeError) or not exception.args or not isinstance(exception.args[0], str):
        return False
    message = exception.args[0]
    return (
        "out of memory" in message.lower()
        or "DefaultCPUAllocator: can't allocate memory" in message
        or "CUDNN_STATUS_NOT_SUPPORTED" in message
    )


def _free_memory(force: bool = False) -> None:
    """Collect garbage and return cached accelerator memory, so the next trial starts from a clean slate.
    On a CPU-only run (no cached memory to return) this only happens when ``force`` (after an OOM)."""
    from featherlight.utilities.seed import _cuda_initialized

    cuda = _cuda_initialized()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = mps_backend is not None and mps_backend.is_available()
    if not (force or cuda or mps):
        return
    gc.collect()
    if cuda:
        try:
            torch.cuda.empty_cache()
        except RuntimeError as err:  # emptying the cache can itself run out of memory
            if not _is_oom_error(err):
                raise
    if mps:
        try:
            torch.mps.empty_cache()
        except (RuntimeError, AttributeError):
            pass


# ------------------------------------------------------------------------------------------ attribute lookup
def _hparams_of(obj: Any) -> Optional[Any]:
    try:
        hparams = getattr(obj, "hparams", None)
    except Exception:
        return None
    return hparams if isinstance(hparams, Mapping) else None


def _attr_holders(model: Any, name: str, datamodule: Any = None) -> list[Any]:
    """Where ``name`` lives, in Lightning's order: the module, its hparams, the datamodule (the one given,
    else the trainer's), the datamodule's hparams."""
    holders: list[Any] = []
    if hasattr(model, name):
        holders.append(model)
    hparams = _hparams_of(model)
    if hparams is not None and name in hparams:
        holders.append(hparams)
    if datamodule is None:
        try:
            datamodule = model.trainer.datamodule
        except (AttributeError, RuntimeError):  # not attached to a trainer
            datamodule = None
    if datamodule is not None:
        if hasattr(datamodule, name):
            holders.append(datamodule)
        hparams = _hparams_of(datamodule)
        if hparams is not None and name in hparams:
            holders.append(hparams)
    return holders


def _has_attr(model: Any, name: str, datamodule: Any = None) -> bool:
    return bool(_attr_holders(model, name, datamodule))


def _get_attr(model: Any, name: str, datamodule: Any = None) -> Any:
    """The value of ``name`` from its last holder (Lightning's rule)."""
    holders = _attr_holders(model, name, datamodule)
    if not holders:
        raise AttributeError(f"`{name}` is not an attribute of the model, its hparams, the datamodule or its hparams.")
    holder = holders[-1]
    return holder[name] if isinstance(holder, Mapping) else getattr(holder, name)


def _set_attr(model: Any, name: str, value: Any, datamodule: Any = None) -> None:
    """Set ``name`` on every holder."""
    holders = _attr_holders(model, name, datamodule)
    if not holders:
        raise AttributeError(f"`{name}` is not an attribute of the model, its hparams, the datamodule or its hparams.")
    for holder in holders:
        if isinstance(holder, Mapping):
            holder[name] = value  # type: ignore[index]
        else:
            setattr(holder, name, value)


def _warn_if_ambiguous(model: Any, name: str) -> None:
    hparams = _hparams_of(model)
    if hasattr(model, name) and hparams is not None and name in hparams:
        rank_zero_warn(
            f"Field `model.{name}` and `model.hparams.{name}` are mutually exclusive! The tuner updates both; keep "
            "only one of them to avoid confusion."
        )

