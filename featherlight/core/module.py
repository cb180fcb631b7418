"""LightningModule: an ``nn.Module`` that also says how to train, validate, test and predict."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from featherlight.core.hooks import CheckpointHooks, DataHooks, ModelHooks
from featherlight.core.mixins.hparams_mixin import HyperparametersMixin
from featherlight.core.optimizer import LightningOptimizer
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import WarningCache

_warnings = WarningCache()


class LightningModule(HyperparametersMixin, ModelHooks, DataHooks, CheckpointHooks, nn.Module):
    """Organise research code: the model, its steps and its optimizers, while the Trainer runs the loop.

    Override ``training_step`` and ``configure_optimizers`` at least. Everything else (evaluation
    steps, hooks, ``self.log``) is optional. The module never needs ``.cuda()``: the trainer moves
    it and every batch; use ``self.device`` or ``type_as`` for tensors created inside a step.
    """

    # properties TorchScript must not compile (they reach the trainer or Python-only state)
    __jit_unused_properties__: list[str] = [
        "example_input_array", "on_gpu", "current_epoch", "global_step", "global_rank", "local_rank", "logger",
        "loggers", "automatic_optimization", "trainer", "strict_loading", "device", "dtype", "hparams",
        "hparams_initial",
    ]
    _jit_is_scripting = False
    # where a checkpoint keeps the hyperparameters (the keys Lightning's checkpoints use)
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"
    # Lightning's name of the hook running now. featherlight's trainer tracks it in `trainer.hooks.current`; this is
    # read only when that is None, e.g. by code that sets it and calls a step by hand (as Lightning's tests do)
    _current_fx_name: Optional[str] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Optional["Trainer"] = None
        self._automatic_optimization: bool = True
        self._strict_loading: Optional[bool] = None
        self._example_input_array: Any = None
        # where new tensors go now: the device of `trainer.init_module()` (or of a `with torch.device(...)`)
        self._device: torch.device = torch.get_default_device()
        self._dtype: torch.dtype = torch.get_default_dtype()
        self._param_requires_grad_state: dict[Tensor, bool] = {}
        self._compiler_ctx: Optional[dict] = None

    # ------------------------------------------------------------------ properties
    @property
    def trainer(self) -> "Trainer":
        """The Trainer running this module. Raises if the module is not attached to one."""
        trainer = self._trainer
        if trainer is None and not self._jit_is_scripting:
            raise RuntimeError(f"{self.__class__.__qualname__} is not attached to a `Trainer`.")
        return trainer  # type: ignore[return-value]

    @trainer.setter
    def trainer(self, trainer: Optional["Trainer"]) -> None:
        object.__setattr__(self, "_trainer", trainer)

    @property
    def device(self) -> torch.device:
        """The device the module's parameters live on (kept up to date by ``.to()``/``.cuda()``/``.cpu()``)."""
        device = self._device
        if device.type == "cuda" and device.index is None:  # always with its index, as in Lightning
            return torch.device(f"cuda:{torch.cuda.current_device()}")
        return device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the module's parameters."""
        return self._dtype

    @property
    def example_input_array(self) -> Any:
        """An example input for ``forward``, used by the model summary (input/output sizes) and exports."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def current_epoch(self) -> int:
        """The current epoch in the Trainer, or 0 if not attached."""
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        """Total optimizer steps taken so far (across epochs), or 0 if not attached."""
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def automatic_optimization(self) -> bool:
        """If False, ``training_step`` steps the optimizers itself (``self.optimizers()``, ``self.manual_backward``)."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    @property
    def strict_loading(self) -> bool:
        """Whether ``load_state_dict`` is strict when a checkpoint is restored by the Trainer."""
        return True if self._strict_loading is None else self._strict_loading

    @strict_loading.setter
    def strict_loading(self, strict: bool) -> None:
        self._strict_loading = strict

    @property
    def logger(self) -> Optional["Logger"]:
        """The Trainer's first logger, or None."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list["Logger"]:
        """Every logger of the Trainer."""
        return self._trainer.loggers if self._trainer is not None else []

    # ------------------------------------------------------------------ device / dtype tracking
    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> "LightningModule":
        out = super()._apply(fn, *args, **kwargs)
        # `.to()`, `.cuda()`, `.half()` all end here; remember where the tensors went so `self.device`
        # is a plain attribute read in steps.
        for t in self.parameters():
            object.__setattr__(self, "_device", t.device)
            if t.is_floating_point():
                object.__setattr__(self, "_dtype", t.dtype)
            break
        else:
            for t in self.buffers():
                object.__setattr__(self, "_device", t.device)
                break
        return out

    # ------------------------------------------------------------------ the steps
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Same as ``nn.Module.forward``; use it for inference."""
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the training loss (a tensor, or a dict with a ``"loss"`` key, or None to skip)."""
        raise MisconfigurationException(
            "`training_step` must be implemented to be used with the Trainer: define "
            "`def training_step(self, batch, batch_idx)` returning the loss."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Operates on a single batch of validation data: compute and ``self.log`` metrics."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Operates on a single batch of test data: compute and ``self.log`` metrics."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Return the prediction for one batch. The default calls ``self(batch)``."""
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizers and schedulers, in any of Lightning's forms."""
        raise MisconfigurationException(
            "`configure_optimizers` must be implemented to be used with the Trainer: return an optimizer, e.g. "
            "`return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )

    def configure_callbacks(self) -> Union[Sequence[Any], Any]:
        """Callbacks the module needs; they replace Trainer callbacks of the same type."""
        return []

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Union[str, Callable] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log a scalar (number, one-element tensor, or torchmetrics Metric) under ``name``.

        Defaults depend on where it is called: in ``training_step`` ``on_step=True, on_epoch=False``; in
        evaluation steps and epoch hooks ``on_step=False, on_epoch=True`` (start and epoch hooks allow only
        that). With both on, the value is logged as ``name_step`` and ``name_epoch``. Epoch values are the
        ``reduce_fx`` (``"mean"``, ``"sum"``, ``"max"``, ``"min"``, or torch's or Python's function of that name)
        over the epoch (a mean weighted by ``batch_size``, inferred from the batch when not given), reduced
        across processes if ``sync_dist``. With several evaluation dataloaders the key gets
        ``/dataloader_idx_N`` (after ``_step``/``_epoch``) unless ``add_dataloader_idx=False``. The same key
        logged in a later hook (``on_train_epoch_end`` after ``training_step``) wins in the metric dicts.

        Raises:
            MisconfigurationException: in a hook that cannot log, with ``on_step``/``on_epoch`` the hook does not
                allow, an unsupported ``reduce_fx``, a key ending in ``/dataloader_idx_N``, the key twice in one hook
                with other arguments, or a torchmetrics Metric that is not an attribute of the module.
            ValueError: for a value that is not a number, a one-element tensor or a Metric.
        """
        trainer = self._trainer
        if trainer is None:
            _warnings.warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model yet."
                " This is most likely because the model hasn't been passed to the `Trainer`. (The value is dropped.)"
            )
            return
        store = trainer.results.store
        fx = trainer.hooks.current
        # the common case, a scalar tensor logged again under a known key, takes the store's short path
        if store is not None and batch_size is None and store.log_again(fx, name, value):
            return
        if trainer.barebones:  # once per run: barebones is the speed mode, a warning per call would cost
            trainer.warnings.warn(
                "You are trying to `self.log()` but `Trainer(barebones=True)` is configured. Logging can "
                "impact raw speed so it is disabled under this setting."
            )
            return
        if fx is None:
            fx = self._current_fx_name  # a hook driven by hand, outside the Trainer's loops
        if store is None:
            store = trainer.results.open_store(trainer, fx)
        if fx is None:
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow. (Call it from a"
                " hook the Trainer runs, e.g. `training_step` or `on_validation_epoch_end`.)"
            )
        store.log(trainer, fx, name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist,
                  sync_dist_group, add_dataloader_idx, batch_size, rank_zero_only, metric_attribute)

    def log_dict(
        self,
        dictionary: Union[Mapping[str, Any], Any],
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Union[str, Callable] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log every ``name: value`` pair of ``dictionary`` (or of a torchmetrics MetricCollection)."""
        trainer = self._trainer
        if trainer is not None and trainer.barebones:
            trainer.warnings.warn(
                "You are trying to `self.log_dict()` but `Trainer(barebones=True)` is configured. Logging can "
                "impact raw speed so it is disabled under this setting."
            )
            return
        items = dictionary.items() if hasattr(dictionary, "items") else dictionary
        for k, v in items:
            self.log(k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx,
                     batch_size=batch_size, rank_zero_only=rank_zero_only)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the global-zero process only (the progress bar is kept intact)."""
        trainer = self._trainer
        if trainer is None or trainer.is_global_zero:
            bar = trainer.progress_bar_callback if trainer is not None else None
            if bar is not None and hasattr(bar, "print"):
                bar.print(*args, **kwargs)
            else:
                print(*args, **kwargs)

    # ------------------------------------------------------------------ optimisation
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) from ``configure_optimizers``: one, or a list when there are several."""
        trainer = self.trainer
        opts: list = trainer.strategy.lightning_optimizers if use_pl_optimizer else trainer.optimizers
        if not opts:
            return []
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from ``configure_optimizers``: None, one, or a list when there are several."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward for manual optimization: use instead of ``loss.backward()`` (handles precision scaling)."""
        trainer = self.trainer
        if self.automatic_optimization:
            raise MisconfigurationException(
                "`manual_backward` is for manual optimization only; set `self.automatic_optimization = False` "
                "in `__init__`, or return the loss from `training_step` instead."
            )
        trainer.optimization.backward(loss, None, *args, **kwargs)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Run the backward pass. Override to customise it."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: Union[Optimizer, LightningOptimizer]) -> None:
        """Make only ``optimizer``'s parameters require gradients: the parameters of the trainer's *other* optimizers
        are frozen (their ``requires_grad`` is remembered for :meth:`untoggle_optimizer`). Parameters that belong to
        no optimizer are left alone, as in Lightning."""
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        state: dict[Tensor, bool] = {}
        for other in self.trainer.optimizers:
            for group in other.param_groups:
                for p in group["params"]:
                    if p not in state:
                        state[p] = p.requires_grad
                        p.requires_grad = False
        for group in opt.param_groups:  # this optimizer's parameters keep the setting they had
            for p in group["params"]:
                p.requires_grad = state.get(p, p.requires_grad)
        self._param_requires_grad_state = state

    def untoggle_optimizer(self, optimizer: Union[Optimizer, LightningOptimizer]) -> None:
        """Undo :meth:`toggle_optimizer`: the other optimizers' parameters get their ``requires_grad`` back."""
        state = self._param_requires_grad_state
        for p, requires_grad in state.items():
            p.requires_grad = requires_grad
        self._param_requires_grad_state = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Union[Optimizer, LightningOptimizer]) -> Iterator[None]:
        """:meth:`toggle_optimizer` for the duration of a ``with`` block, then :meth:`untoggle_optimizer`."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: Optimizer,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value. No host sync.

        Unset arguments take the Trainer's ``gradient_clip_val``/``gradient_clip_algorithm``; a value that
        contradicts one set on the Trainer is an error (Lightning's rule)."""
        trainer = self.trainer
        if gradient_clip_val is None:
            gradient_clip_val = trainer.gradient_clip_val or 0.0
        elif trainer.gradient_clip_val is not None and trainer.gradient_clip_val != gradient_clip_val:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them (the "
                "Trainer's value reaches `configure_gradient_clipping` as its `gradient_clip_val` argument)."
            )
        if gradient_clip_algorithm is None:
            algorithm = trainer.gradient_clip_algorithm or "norm"
        else:
            algorithm = gradient_clip_algorithm.lower()
            if trainer.gradient_clip_algorithm is not None and trainer.gradient_clip_algorithm != algorithm:
                raise MisconfigurationException(
                    f"You have set `Trainer(gradient_clip_algorithm={trainer.gradient_clip_algorithm!r})` and have "
                    f"passed `clip_gradients(gradient_clip_algorithm={algorithm!r})`. Please use only one of them."
                )
        if not isinstance(gradient_clip_val, (int, float)):
            raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val}.")
        if algorithm not in ("norm", "value"):
            raise MisconfigurationException(
                f"`gradient_clip_algorithm` {algorithm} is invalid. Allowed algorithms: ['value', 'norm']."
            )
        if gradient_clip_val == 0:
            return
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        if algorithm == "norm":
            trainer.strategy.clip_grad_norm(params, float(gradient_clip_val))
        else:
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Clip gradients before the optimizer steps. The default uses the Trainer's clipping flags."""
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Optional[Any]) -> None:
        """Step one scheduler; ``metric`` is the monitored value for ReduceLROnPlateau-like schedulers."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Union[Optimizer, LightningOptimizer],
        optimizer_closure: Optional[Callable[[], Any]] = None,
    ) -> None:
        """Step ``optimizer``. ``optimizer_closure`` runs training_step, zero_grad and backward: pass it on."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        """Zero the gradients of ``optimizer`` (set to None)."""
        optimizer.zero_grad()

    # ------------------------------------------------------------------ distributed helpers
    def all_gather(self, data: Any, group: Optional[Any] = None, sync_grads: bool = False) -> Any:
        """Gather tensors (or collections of them) from every process; a new leading dim of world size."""
        from featherlight.utilities.apply_func import apply_to_collection

        strategy = self.trainer.strategy
        return apply_to_collection(data, Tensor, strategy.all_gather, group=group, sync_grads=sync_grads)

    # ------------------------------------------------------------------ misc
    def freeze(self) -> "LightningModule":
        """Freeze all parameters and switch to eval mode; returns the module."""
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def unfreeze(self) -> "LightningModule":
        """Unfreeze all parameters and switch to train mode; returns the module."""
        for p in self.parameters():
            p.requires_grad = True
        return self.train()

    @torch.no_grad()
    def to_torchscript(
        self, file_path: Optional[Union[str, os.PathLike]] = None, method: str = "script",
        example_inputs: Optional[Any] = None, **kwargs: Any,
    ) -> Any:
        """Export to TorchScript by ``method="script"`` or ``"trace"`` (with ``example_inputs`` or
        ``example_input_array``); saved to ``file_path`` when given."""
        mode = self.training
        self.eval()
        try:
            object.__setattr__(self, "_jit_is_scripting", True)
            if method == "script":
                module = torch.jit.script(self, **kwargs)
            elif method == "trace":
                example = example_inputs if example_inputs is not None else self.example_input_array
                if example is None:
                    raise ValueError(
                        "`to_torchscript(method='trace')` needs `example_inputs` or `self.example_input_array`."
                    )
                from featherlight.utilities.apply_func import move_data_to_device

                module = torch.jit.trace(self, example_inputs=move_data_to_device(example, self.device), **kwargs)
            else:
                raise ValueError(f"`to_torchscript` method must be 'script' or 'trace', got {method!r}.")
        finally:
            object.__setattr__(self, "_jit_is_scripting", False)
            self.train(mode)
        if file_path is not None:
            torch.jit.save(module, file_path)
        return module

    @torch.no_grad()
    def to_onnx(self, file_path: Union[str, os.PathLike, IO[bytes]], input_sample: Optional[Any] = None,
                **kwargs: Any) -> Any:
        """Export to ONNX (needs the ``onnx`` package) with ``input_sample`` or ``example_input_array``."""
        sample = input_sample if input_sample is not None else self.example_input_array
        if sample is None:
            raise ValueError("`to_onnx` needs `input_sample` or `self.example_input_array` to be set.")
        from featherlight.utilities.apply_func import move_data_to_device

        mode = self.training
        self.eval()
        try:
            sample = move_data_to_device(sample, self.device)
            return torch.onnx.export(self, sample if isinstance(sample, tuple) else (sample,), file_path, **kwargs)
        finally:
            self.train(mode)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Union[str, os.PathLike, IO[bytes]],
        map_location: Any = None,
        hparams_file: Optional[Union[str, os.PathLike]] = None,
        strict: Optional[bool] = None,
        weights_only: Optional[bool] = None,
        **kwargs: Any,
    ) -> "LightningModule":
        """Build the module from the hyperparameters saved in the checkpoint (``kwargs`` override them),
        then load its weights.

        Loading never executes code from the file (``torch.load(weights_only=True)`` with an allow-list);
        a checkpoint that needs arbitrary unpickling is refused unless you pass ``weights_only=False``.
        """
        from featherlight.core.saving import load_weights, rebuild_module

        model, checkpoint, dropped = rebuild_module(cls, checkpoint_path, map_location, hparams_file,
                                                    weights_only is not False, **kwargs)
        if model._strict_loading is not None and strict is not None and strict != model.strict_loading:
            raise ValueError(
                f"You set `.load_from_checkpoint(..., strict={strict!r})` which is in conflict with "
                f"`{cls.__name__}.strict_loading={model.strict_loading!r}. Please set the same value for both of them."
            )
        return load_weights(model, checkpoint, model.strict_loading if strict is None else strict, checkpoint_path,
                            dropped)

    def __getstate__(self) -> dict:
        # A module is pickled (spawn, deepcopy) without its trainer.
        state = dict(self.__dict__)
        state["_trainer"] = None
        return state


@contextlib.contextmanager
def jit_tracing(module: nn.Module) -> Iterator[None]:
    """Inside, ``torch.jit`` may walk ``module``'s attributes (tracing does): the LightningModules in it answer
    ``trainer`` with None instead of raising when they have none (e.g. a TensorBoard graph of a module that never
    ran)."""
    before = [(m, m._jit_is_scripting) for m in module.modules() if isinstance(m, LightningModule)]
    for m, _ in before:
        object.__setattr__(m, "_jit_is_scripting", True)
    try:
        yield
    finally:
        for m, flag in before:
            object.__setattr__(m, "_jit_is_scripting", flag)
