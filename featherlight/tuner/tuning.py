"""The Tuner: find the largest batch size that fits, or a good initial learning rate, before training.

How the searches run
--------------------
Both searches are callbacks (:class:`~featherlight.callbacks.BatchSizeFinder`,
:class:`~featherlight.callbacks.LearningRateFinder`) that run at ``on_fit_start`` (or at the start of
validate/test/predict for the batch size), as Lightning's do: by then the run has called
``prepare_data``/``setup``/``configure_model``/``configure_optimizers`` and moved the module to its
device, so a trial is just the trainer's own loop (``fit_loop.run_fit`` or the evaluation loop) run
for a few steps. :class:`Tuner` adds such a callback for one call, runs ``trainer.fit`` (or
``validate``/``test``/``predict``) and has the callback end that run as soon as the search is over;
the run is then torn down like a finished one (``teardown`` hooks), not like a failed one.

We chose this over a fresh internal ``Trainer`` per trial because that would call the user's
``prepare_data``/``setup``/``configure_model`` once per trial (downloads, dataset loading), and
because the callback form has to run inside the user's own fit anyway.

What a trial may touch, and how it is put back
----------------------------------------------
* Swapped for fresh objects during the trials (the originals are never touched): the loop counters
  (``LoopState``), the metric store behind ``callback_metrics``, the hook dispatcher, the trainer
  state, the callbacks (only the search's own), the loggers (a ``DummyLogger`` if there were any)
  and the profiler (a pass-through one).
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
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import torch

from featherlight.trainer.states import _StopRun
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.datamodule import LightningDataModule
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer
    from featherlight.tuner.lr_finder import _LRFinder

_METHODS = ("fit", "validate", "test", "predict")


class _TunerExitException(_StopRun):
    """Raised by a finder callback that :class:`Tuner` started, to end the run once the search is done."""


class Tuner:
    """Tune a model's batch size and learning rate with the trainer's own loop.

    Example::

        trainer = Trainer(max_epochs=3)
        tuner = Tuner(trainer)
        tuner.scale_batch_size(model)  # sets model.batch_size (or hparams/datamodule) to the largest that fits
        lr_finder = tuner.lr_find(model)  # sets model.lr / model.learning_rate to the suggestion
        trainer.fit(model)

    Each call leaves the trainer, the module's weights and the RNG states as they were; only the
    tuned attribute changes.
    """

    def __init__(self, trainer: "Trainer") -> None:
        self._trainer = trainer

    def scale_batch_size(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.0,
        max_val: int = 8192,
    ) -> Optional[int]:
        """Find the largest batch size that runs ``steps_per_trial`` steps without running out of memory.

        Args:
            model: the module to tune. Its dataloaders must be built by a ``*_dataloader()`` hook (of the
                module or the datamodule) that reads the batch-size attribute.
            train_dataloaders, val_dataloaders, dataloaders, datamodule: as for ``trainer.fit`` (or the
                ``method``'s entry point). Loaders passed directly cannot be resized and are refused.
            method: the loop to size the batch for: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
            mode: ``"power"`` doubles the size until a trial runs out of memory and keeps the last one that
                fit; ``"binsearch"`` doubles the same way, then bisects between the last size that fit and
                the first that did not.
            steps_per_trial: optimizer steps (or evaluation batches) each trial runs.
            init_val: the first size tried.
            max_trials: the most trials run.
            batch_arg_name: the attribute holding the batch size, looked up on ``model``, ``model.hparams``,
                the datamodule and ``datamodule.hparams`` (all the holders found are updated).
            margin: fraction taken off the ``"binsearch"`` result as a safety buffer (Lightning's default is
                0.05; ours is 0 so that the result is a size that was actually run).
            max_val: the largest size tried.

        The search never goes beyond the dataset: a size at or above the number of samples is the last
        one tried, and the result is capped at the dataset length.

        Returns:
            The batch size found (also set on the attribute), or None when ``fast_dev_run`` is on.
        """
        if isinstance(train_dataloaders, _datamodule_type()):
            datamodule, train_dataloaders = train_dataloaders, None
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        _check_scale_batch_size_configuration(self._trainer)
        from featherlight.callbacks.batch_size_finder import BatchSizeFinder
        from featherlight.tuner.batch_size_scaling import _check_batch_size_source

        given = train_dataloaders if method == "fit" else dataloaders
        dm = datamodule if datamodule is not None else (self._trainer.datamodule if method != "fit" else None)
        _check_batch_size_source(model, batch_arg_name, dm, given, method)

        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val,
                                 max_trials=max_trials, batch_arg_name=batch_arg_name, margin=margin,
                                 max_val=max_val)
        finder._early_exit = True
        _run_with_finder(self._trainer, finder, model, method, train_dataloaders, val_dataloaders, dataloaders,
                         datamodule)
        return finder.optimal_batch_size

    def lr_find(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> Optional["_LRFinder"]:
        """Learning-rate range test: train ``num_training`` steps while the learning rate grows from
        ``min_lr`` to ``max_lr`` and record the (smoothed) loss at each.

        Args:
            model: the module to tune (one optimizer).
            train_dataloaders, val_dataloaders, dataloaders, datamodule: as for ``trainer.fit``.
            method: must be ``"fit"``.
            min_lr, max_lr: the range searched.
            num_training: the number of learning rates tried (one optimizer step each).
            mode: ``"exponential"`` or ``"linear"`` growth of the learning rate.
            early_stop_threshold: stop once the smoothed loss exceeds this multiple of the best one seen
                (None: never stop early).
            update_attr: set the suggestion on ``model.lr``/``model.learning_rate`` (or ``attr_name``), in the
                module or its ``hparams``.
            attr_name: the attribute holding the learning rate, if not ``lr``/``learning_rate``.

        Returns:
            The :class:`~featherlight.tuner.lr_finder._LRFinder` with ``results``, ``suggestion()`` and
            ``plot()``, or None when ``fast_dev_run`` is on.
        """
        if method != "fit":
            raise MisconfigurationException("method='fit' is the only valid configuration to run lr finder.")
        if isinstance(train_dataloaders, _datamodule_type()):
            datamodule, train_dataloaders = train_dataloaders, None
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        _check_lr_find_configuration(self._trainer)
        from featherlight.callbacks.lr_finder import LearningRateFinder

        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        finder._early_exit = True
        _run_with_finder(self._trainer, finder, model, "fit", train_dataloaders, val_dataloaders, None, datamodule)
        return finder.optimal_lr


# ------------------------------------------------------------------------------------------ configuration checks
def _datamodule_type() -> type:
    from featherlight.core.datamodule import LightningDataModule

    return LightningDataModule


def _check_tuner_configuration(train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit":
        if dataloaders is not None:
            raise MisconfigurationException(
                "In tuner with method='fit', `dataloaders` must be None: pass `train_dataloaders` and "
                "`val_dataloaders` instead."
            )
    elif train_dataloaders is not None or val_dataloaders is not None:
        raise MisconfigurationException(
            f"In tuner with method={method!r}, `train_dataloaders` and `val_dataloaders` must be None: pass "
            "`dataloaders` instead."
        )


def _check_scale_batch_size_configuration(trainer: "Trainer") -> None:
    if trainer.strategy.world_size > 1:
        raise ValueError("Tuning the batch size is not supported with distributed strategies; use `devices=1`.")
    from featherlight.callbacks.batch_size_finder import BatchSizeFinder

    if any(isinstance(cb, BatchSizeFinder) for cb in trainer.callbacks):
        raise ValueError(
            "The Trainer already has a `BatchSizeFinder` callback. Remove it from `callbacks` to use "
            "`Tuner.scale_batch_size`, or let the callback do the search."
        )


def _check_lr_find_configuration(trainer: "Trainer") -> None:
    from featherlight.callbacks.lr_finder import LearningRateFinder

    if any(isinstance(cb, LearningRateFinder) for cb in trainer.callbacks):
        raise ValueError(
            "The Trainer already has a `LearningRateFinder` callback. Remove it from `callbacks` to use "
            "`Tuner.lr_find`, or let the callback do the search."
        )


# ------------------------------------------------------------------------------------------ running a finder
def _run_with_finder(trainer: "Trainer", finder: Any, model: "LightningModule", method: str, train_dataloaders: Any,
                     val_dataloaders: Any, dataloaders: Any, datamodule: Any) -> None:
    """Run the ``method`` entry point with ``finder`` as the only callback; the finder ends the run after
    its search. The trainer, module and RNGs are put back as they were afterwards."""
    from featherlight.core.datamodule import LightningDataModule

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a `LightningModule`, got {type(model).__name__}.")
    dms = [d for d in (datamodule, trainer.datamodule) if isinstance(d, LightningDataModule)]
    with _Preserved(trainer, model, dms):
        trainer.callbacks = [finder]
        _quiet_trainer(trainer)
        try:
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            elif method == "validate":
                trainer.validate(model, dataloaders, datamodule=datamodule, verbose=False)
            elif method == "test":
                trainer.test(model, dataloaders, datamodule=datamodule, verbose=False)
            else:
                trainer.predict(model, dataloaders, datamodule=datamodule, return_predictions=False)
        except _TunerExitException:
            pass


def _quiet_trainer(trainer: "Trainer") -> None:
    """No logging, profiling or progress output while searching; fresh run state the originals never see."""
    from featherlight.loggers.logger import DummyLogger
    from featherlight.trainer.dispatch import _Dispatcher
    from featherlight.trainer.logging import _LogState
    from featherlight.trainer.states import LoopState

    # a DummyLogger keeps `self.logger` usable in user code (Lightning does the same)
    trainer.loggers = [DummyLogger()] if trainer.loggers else []
    trainer.profiler = trainer._build_profiler(None)
    trainer._loop = LoopState()
    trainer._log = _LogState()
    trainer.state = copy.copy(trainer.state)
    trainer._dispatch = _Dispatcher(trainer)


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
        from featherlight.utilities.seed import _cuda_initialized, isolate_rng

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
            for obj in (precision, getattr(precision, "scaler", None), trainer._loop, trainer._log, trainer.state,
                        trainer._dispatch):
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
    from featherlight.utilities.seed import _cuda_initialized

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
            _quiet_trainer(trainer)
            for name, value in self.flags.items():
                setattr(trainer, name, value)
            trainer._resume = None  # a checkpoint's mid-epoch position belongs to the real run
            trainer._dispatch.rebuild()
            if getattr(trainer, "_training_step", None) is not None:
                # unprofiled: the user's profiler must not record the trials
                trainer._training_step = trainer.strategy.step_function("training_step")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def begin_trial(self) -> None:
        from featherlight.trainer.logging import _LogState
        from featherlight.trainer.states import LoopState

        trainer = self.trainer
        if self._trials:
            self._module.restore_weights()
            self._optimization.restore()
            if self._precision_state:
                trainer.strategy.precision.load_state_dict(copy.deepcopy(self._precision_state))
            _free_memory()
        self._trials += 1
        trainer._loop = LoopState()
        trainer._log = _LogState()
        trainer.state = copy.copy(self._state)
        trainer.should_stop = False
        trainer._current_fx = None
        trainer.train_dataloader = None
        trainer._train_loaded_epoch = None
        trainer._val_loaders = None


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
    from featherlight.trainer import fit_loop

    with torch.autograd.set_detect_anomaly(trainer._detect_anomaly):
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
        trainer = getattr(model, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
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
            f"Both `model.{name}` and `model.hparams.{name}` exist; the tuner updates both. Keep only one of them "
            "to avoid confusion."
        )

