"""The ``self.log`` store: values kept as tensors, reduced only when somebody reads them.

A ``self.log`` call costs a dict lookup, a detach and a list append. Nothing is moved, reduced or
synchronised with the host per step: step values are read (and turned into numbers by the
progress bar and the loggers) at log intervals; epoch values are reduced once, at epoch end, across
ranks when ``sync_dist=True``.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from featherlight.utilities.apply_func import extract_batch_size
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.warnings import PossibleUserWarning

# Where `self.log` may be called, and what it may do there (Lightning's table): (allowed on_step, allowed on_epoch,
# default on_step, default on_epoch). Hooks missing from this table forbid logging.
_STEP_HOOK = ((False, True), (False, True), True, False)
_EVAL_STEP_HOOK = ((False, True), (False, True), False, True)
_EPOCH_HOOK = ((False,), (True,), False, True)
_LOG_OPTIONS: dict[str, tuple] = {
    "training_step": _STEP_HOOK,
    "on_before_backward": _STEP_HOOK,
    "backward": _STEP_HOOK,
    "on_after_backward": _STEP_HOOK,
    "on_before_optimizer_step": _STEP_HOOK,
    "optimizer_step": _STEP_HOOK,
    "on_before_zero_grad": _STEP_HOOK,
    "optimizer_zero_grad": _STEP_HOOK,
    "on_train_batch_start": _STEP_HOOK,
    "on_train_batch_end": _STEP_HOOK,
    "configure_gradient_clipping": _STEP_HOOK,
    "clip_gradients": _STEP_HOOK,
    "on_train_start": _EPOCH_HOOK,
    "on_train_epoch_start": _EPOCH_HOOK,
    "on_train_epoch_end": _EPOCH_HOOK,
    "validation_step": _EVAL_STEP_HOOK,
    "test_step": _EVAL_STEP_HOOK,
    "on_validation_batch_start": _EVAL_STEP_HOOK,
    "on_test_batch_start": _EVAL_STEP_HOOK,
    "on_validation_batch_end": _EVAL_STEP_HOOK,
    "on_test_batch_end": _EVAL_STEP_HOOK,
    "on_validation_start": _EPOCH_HOOK,
    "on_test_start": _EPOCH_HOOK,
    "on_validation_epoch_start": _EPOCH_HOOK,
    "on_test_epoch_start": _EPOCH_HOOK,
    "on_validation_epoch_end": _EPOCH_HOOK,
    "on_test_epoch_end": _EPOCH_HOOK,
}

# `reduce_fx` as Lightning accepts it: the names (any case, "avg" too), torch's functions and Python's builtins
_REDUCTIONS: dict[Any, str] = {
    "mean": "mean", "avg": "mean", torch.mean: "mean",
    "sum": "sum", torch.sum: "sum", sum: "sum",
    "max": "max", torch.max: "max", max: "max",
    "min": "min", torch.min: "min", min: "min",
}

# Pending values are folded into the running total every this many calls, bounding memory while
# keeping the per-call cost to a list append.
_FOLD_EVERY = 256

_ANY = object()  # `ResultStore.metrics`: entries of every dataloader


def hook_error(fx: Optional[str]) -> str:
    """Why ``self.log`` cannot be called in ``fx`` (Lightning's sentence first)."""
    if fx is None:
        return ("You are trying to `self.log()` but it is not managed by the `Trainer` control flow. (Call it from a"
                " hook the Trainer runs, e.g. `training_step` or `on_validation_epoch_end`.)")
    return (f"You can't `self.log()` inside `{fx}`. HINT: You can still log directly to the logger by using"
            " `self.logger.experiment`. (`self.log` works in the step methods and in the start, batch and epoch hooks"
            " of training, validation and testing.)")


def _float_dtype() -> torch.dtype:
    """The dtype logged numbers are reported in: torch's default, but no lower than float32 (Lightning's)."""
    dtype = torch.get_default_dtype()
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _checked_value(name: str, value: Any) -> Any:
    """``value`` ready to record (a detached scalar tensor, or a number), or Lightning's error for it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"`self.log({name}, {value})` was called, but the tensor must have a single element."
                f" You can try doing `self.log({name}, {value}.mean())`"
            )
        value = value.detach()
        return value.squeeze() if value.ndim else value
    if isinstance(value, numbers.Number):
        return value
    if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"`self.log({name}, {value})` was called, but nested dictionaries cannot be logged")
    raise ValueError(
        f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged. Log a Python"
        " number, a one-element tensor or a torchmetrics Metric (`self.log_dict` takes a dict of them)."
    )


def _check_metric_attribute(trainer: "Trainer", name: str, metric: Any) -> None:
    """A logged torchmetrics Metric must be an attribute of the module (Lightning restores its state from there)."""
    module = trainer.lightning_module
    found = {} if module is None else {id(m): n for n, m in module.named_modules() if _is_metric(m)}
    if not found:
        raise MisconfigurationException(
            "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
            " You can fix this by setting an attribute for the metric in your `LightningModule`."
        )
    if id(metric) not in found:
        raise MisconfigurationException(
            "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
            f" You can fix this by calling `self.log({name}, ..., metric_attribute=name)` where `name` is one"
            f" of {list(found.values())}"
        )


class _Meta(NamedTuple):
    fx: str
    name: str  # the key as logged
    prog_bar: bool
    logger: bool
    on_step: bool
    on_epoch: bool
    reduce: str
    sync_dist: bool
    sync_dist_group: Any
    dataloader_idx: Optional[int]  # the dataloader it was logged under (None: one dataloader, or an epoch hook)
    rank_zero_only: bool
    suffix: str = ""  # "/dataloader_idx_N" with several dataloaders and `add_dataloader_idx=True`

    @property
    def forked(self) -> bool:
        return self.on_step and self.on_epoch

    def metric_keys(self, on_step: bool) -> tuple[str, str]:
        """(the plain key, the key of a step or epoch value): ``loss/dataloader_idx_0`` and
        ``loss_epoch/dataloader_idx_0`` (Lightning puts the suffix last)."""
        plain = self.name + self.suffix
        if not self.forked:
            return plain, plain
        return plain, self.name + ("_step" if on_step else "_epoch") + self.suffix


def _is_metric(value: Any) -> bool:
    # torchmetrics.Metric, recognised without importing torchmetrics
    return isinstance(value, torch.nn.Module) and hasattr(value, "compute") and hasattr(value, "update")


class _Entry:
    """One logged key: its last value, and the pieces of its epoch reduction."""

    __slots__ = ("meta", "args", "last", "pending", "total", "count", "computed", "metric", "fast")

    def __init__(self, meta: _Meta) -> None:
        self.meta = meta
        self.args: Optional[tuple] = None  # `self.log`'s arguments at registration; later calls are checked
        self.last: Any = None
        self.pending: list = []  # (value, weight) pairs not folded yet
        self.total: Optional[Tensor] = None
        self.count: Union[int, Tensor] = 0
        self.computed: Optional[Tensor] = None
        self.metric: Any = None
        self.fast = False  # set once the key has been validated: later calls take the short path

    def update(self, value: Any, batch_size: int) -> None:
        self.last = value
        self.computed = None
        if self.meta.on_epoch:
            self.pending.append((value, batch_size))
            if len(self.pending) >= _FOLD_EVERY:
                self._fold()

    def _fold(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        tensors = [v if isinstance(v, Tensor) else torch.tensor(v) for v, _ in pending]
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        values = torch.stack([t.to(dtype) for t in tensors])
        reduce = self.meta.reduce
        if reduce == "mean":
            weights = torch.tensor([w for _, w in pending], dtype=values.dtype, device=values.device)
            part = (values * weights).sum()
            self.count = self.count + sum(w for _, w in pending)
        elif reduce == "sum":
            part = values.sum()
        elif reduce == "max":
            part = values.max()
        else:
            part = values.min()
        if self.total is None:
            self.total = part
        elif reduce in ("mean", "sum"):
            self.total = self.total + part
        elif reduce == "max":
            self.total = torch.maximum(self.total, part)
        else:
            self.total = torch.minimum(self.total, part)

    def compute(self, trainer: "Trainer") -> Optional[Tensor]:
        """The epoch value: the reduction over every logged value, across ranks if ``sync_dist``."""
        if self.computed is not None:
            return self.computed
        if self.metric is not None:
            self.computed = self.metric.compute()
            return self.computed
        self._fold()
        if self.total is None:
            return None
        total, count = self.total, self.count
        strategy = trainer.strategy
        if self.meta.sync_dist and strategy.world_size > 1:
            op = {"mean": "sum", "sum": "sum", "max": "max", "min": "min"}[self.meta.reduce]
            total = strategy.reduce(total, group=self.meta.sync_dist_group, reduce_op=op)
            if self.meta.reduce == "mean":
                count = strategy.reduce(torch.tensor(float(count), device=total.device),
                                        group=self.meta.sync_dist_group, reduce_op="sum")
        self.computed = total / count if self.meta.reduce == "mean" else total
        return self.computed

    def step_value(self) -> Any:
        if self.metric is not None:
            return getattr(self.metric, "_forward_cache", None)
        return self.last


class ResultStore:
    """The values logged during one run of a loop (a training epoch, or one evaluation run)."""

    def __init__(self, training: bool) -> None:
        self.training = training
        self.entries: dict[tuple[str, str, Optional[int]], _Entry] = {}
        self.has_step_entries = False
        self.batch: Any = None
        self.batch_size: Optional[int] = None
        self.dataloader_idx: Optional[int] = None
        self.num_dataloaders = 1

    def new_batch(self, batch: Any, dataloader_idx: Optional[int] = None) -> None:
        self.batch = batch
        self.batch_size = None
        self.dataloader_idx = dataloader_idx

    def log(
        self,
        trainer: "Trainer",
        fx: str,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: Optional[bool],
        on_step: Optional[bool],
        on_epoch: Optional[bool],
        reduce_fx: Any,
        sync_dist: bool,
        sync_dist_group: Any,
        add_dataloader_idx: bool,
        batch_size: Optional[int],
        rank_zero_only: bool,
        metric_attribute: Optional[str] = None,
    ) -> None:
        """The full path of ``self.log``: checks the value and the arguments, registers the key on its first call
        in a hook, then records the value (the short path is :meth:`log_again`)."""
        is_metric = _is_metric(value)
        if not is_metric:
            value = _checked_value(name, value)
        args = (prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, sync_dist_group, add_dataloader_idx,
                rank_zero_only)
        entry = self.entries.get((fx, name, self.dataloader_idx))
        if entry is None:
            if is_metric and metric_attribute is None:
                _check_metric_attribute(trainer, name, value)
            entry = self._register(fx, name, value, args)
            trainer.results.claim_keys(trainer, self.training, entry.meta)
        elif args != entry.args:
            # (an entry restored from a checkpoint has no arguments to compare: it takes these)
            if entry.args is not None and self._meta(fx, name, args) != entry.meta:
                raise MisconfigurationException(
                    f"You called `self.log({name}, ...)` twice in `{fx}` with different arguments. This is not"
                    " allowed: log the key with the same arguments each time, or the other values under another name."
                )
            entry.args = args
        if entry.metric is not None:
            entry.computed = None
            return
        if entry.meta.on_epoch and entry.meta.reduce == "mean":
            if batch_size is None:
                batch_size = self.current_batch_size()
        else:
            batch_size = 1
        entry.update(value, batch_size)
        # a step value logged with sync_dist is reduced across ranks here, when every rank logs it (as Lightning
        # does); the epoch reduction keeps the local values and syncs once at epoch end
        sync_step = entry.meta.on_step and entry.meta.sync_dist and trainer.strategy.world_size > 1
        if sync_step:
            strategy = trainer.strategy
            local = value if isinstance(value, Tensor) else torch.tensor(float(value), device=strategy.root_device)
            entry.last = strategy.reduce(local, group=entry.meta.sync_dist_group, reduce_op=entry.meta.reduce)
        entry.fast = entry.metric is None and not sync_step

    def log_again(self, fx: Optional[str], name: str, value: Any) -> bool:
        """The short path of ``self.log``: a scalar tensor logged again under a key already validated in this
        hook. Records it and returns True; returns False (nothing done) when the full path is needed."""
        entry = self.entries.get((fx, name, self.dataloader_idx))
        if entry is None or not entry.fast or type(value) is not Tensor or value.ndim != 0:
            return False
        value = value.detach()
        entry.last = value
        entry.computed = None
        if entry.meta.on_epoch:
            entry.update(value, self.current_batch_size() if entry.meta.reduce == "mean" else 1)
        return True

    def current_batch_size(self) -> int:
        """The running batch's size, inferred once per batch (for batch-size-weighted epoch means)."""
        if self.batch_size is None:
            self.batch_size = 1 if self.batch is None else _safe_batch_size(self.batch)
        return self.batch_size

    def _meta(self, fx: str, name: str, args: tuple) -> _Meta:
        """The key's metadata from ``self.log``'s arguments, checked against Lightning's rules for ``fx``."""
        prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, sync_dist_group, add_dataloader_idx, \
            rank_zero_only = args
        options = _LOG_OPTIONS.get(fx)
        if options is None:
            raise MisconfigurationException(hook_error(fx))
        allowed_step, allowed_epoch, default_step, default_epoch = options
        on_step = default_step if on_step is None else bool(on_step)
        on_epoch = default_epoch if on_epoch is None else bool(on_epoch)
        for flag, value, allowed in (("on_step", on_step, allowed_step), ("on_epoch", on_epoch, allowed_epoch)):
            if value not in allowed:
                raise MisconfigurationException(
                    f"You can't `self.log({flag}={value})` inside `{fx}`, must be one of {allowed}. (Logging "
                    f"`{name!r}` there: drop the `{flag}` argument to get the hook's default.)"
                )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx` when `add_dataloader_idx=True`. Log it without the suffix (it is added when there "
                "are several dataloaders), or pass `add_dataloader_idx=False`."
            )
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"`self.log(on_step=False, on_epoch=False)` is not useful. (`{name!r}` would be logged nowhere: set "
                "one of them to True.)"
            )
        reduce = _REDUCTIONS.get(reduce_fx.lower() if isinstance(reduce_fx, str) else reduce_fx)
        if reduce is None:
            raise MisconfigurationException(
                "Only `self.log(..., reduce_fx={min,max,mean,sum})` are supported. If you need a custom reduction, "
                f"please log a `torchmetrics.Metric` instance instead. Found: {reduce_fx}"
            )
        dataloader_idx = self.dataloader_idx
        suffix = ""
        if add_dataloader_idx and dataloader_idx is not None and self.num_dataloaders > 1:
            suffix = f"/dataloader_idx_{dataloader_idx}"
        return _Meta(fx, name, bool(prog_bar), True if logger is None else bool(logger), on_step, on_epoch, reduce,
                     bool(sync_dist), sync_dist_group, dataloader_idx, bool(rank_zero_only), suffix)

    def _register(self, fx: str, name: str, value: Any, args: tuple) -> _Entry:
        # the same key logged in two hooks (e.g. `training_step` and `on_train_epoch_end`) is two entries; the one
        # registered later wins in the metric dicts, as in Lightning (the epoch-end value over the step's)
        entry = _Entry(self._meta(fx, name, args))
        entry.args = args
        self.has_step_entries |= entry.meta.on_step
        if _is_metric(value):
            entry.metric = value
        self.entries[(fx, name, self.dataloader_idx)] = entry
        return entry

    def metrics(self, trainer: "Trainer", on_step: bool, dataloader_idx: Any = _ANY) -> tuple[dict, dict, dict]:
        """(callback, log, progress bar) metrics as tensors: step values, or epoch reductions; only those logged
        under ``dataloader_idx`` when it is given (None: logged outside any dataloader's batches)."""
        callback: dict[str, Any] = {}
        log: dict[str, Any] = {}
        pbar: dict[str, Any] = {}
        for entry in self.entries.values():
            meta = entry.meta
            if dataloader_idx is not _ANY and meta.dataloader_idx != dataloader_idx:
                continue
            if on_step:
                if not meta.on_step:
                    continue
                value = entry.step_value()
            else:
                if not meta.on_epoch:
                    continue
                value = entry.compute(trainer)
            if value is None:
                continue
            if entry.metric is None:
                # logged numbers and integer tensors are reported as floats, as Lightning does
                if not isinstance(value, Tensor):
                    value = torch.tensor(value, dtype=_float_dtype())
                elif not value.is_floating_point():
                    value = value.to(_float_dtype())
            elif not isinstance(value, Tensor):
                value = torch.tensor(value)
            name, forked = meta.metric_keys(on_step)
            if meta.logger:
                log[forked] = value
            # callback metrics take the plain name and the forked one; evaluation steps are not callback metrics
            if self.training or (meta.on_epoch and not on_step):
                callback[name] = value
                callback[forked] = value
            if meta.prog_bar:
                pbar[forked] = value
        return callback, log, pbar

    def state_dict(self) -> dict[str, Any]:
        """Everything logged so far this epoch, for a mid-epoch checkpoint (Metric objects excluded: their
        state belongs to the module)."""
        entries = []
        for key, e in self.entries.items():
            if e.metric is not None:
                continue
            meta = e.meta._replace(sync_dist_group=None)
            entries.append({
                "key": list(key), "meta": list(meta), "last": e.last,
                "pending": [v for v, _ in e.pending], "weights": [w for _, w in e.pending],
                "total": e.total, "count": e.count,
            })
        return {"entries": entries, "has_step_entries": self.has_step_entries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for item in state.get("entries", []):
            entry = _Entry(_Meta(*item["meta"]))
            entry.last = item["last"]
            entry.pending = list(zip(item["pending"], item["weights"]))
            entry.total, entry.count = item["total"], item["count"]
            self.entries[tuple(item["key"])] = entry
        self.has_step_entries |= bool(state.get("has_step_entries"))

    def reset_metrics(self) -> None:
        for entry in self.entries.values():
            if entry.metric is not None and hasattr(entry.metric, "reset"):
                entry.metric.reset()


def _safe_batch_size(batch: Any) -> int:
    try:
        return extract_batch_size(batch)
    except ValueError:
        return 1


class LogState:
    """The values ``self.log`` recorded and where they go (``trainer.results``).

    Holds the running :class:`ResultStore` (the training epoch's, or the evaluation run's) and the trainer's
    metric dicts (``callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``), refreshed from the store
    only when read or at a log interval, so a training step pays nothing for them; and sends values to the
    loggers (the one place a host sync happens, at log intervals and epoch ends).
    """

    def __init__(self) -> None:
        self.callback: dict[str, Tensor] = {}
        self.logged: dict[str, Tensor] = {}
        self.pbar: dict[str, Any] = {}
        self.store: Optional[ResultStore] = None
        self.train_store: Optional[ResultStore] = None  # the running training epoch's (also during validation)
        self.epoch_end_reached = False
        self.eval_step_counters: dict = {}  # per stage and dataloader: the step evaluation values are logged at
        # every metric key logged this run -> (logged in training?, hook, name as logged): clashes are found when a
        # key is registered (once per key and epoch), never per `self.log` call
        self.key_owners: dict[str, tuple[bool, str, str]] = {}

    def claim_keys(self, trainer: "Trainer", training: bool, meta: _Meta) -> None:
        """Warn when the metric keys of a newly registered ``self.log`` key are already another value's: a key of
        training and of evaluation (``callback_metrics`` keeps only the one logged last), or an explicit
        ``acc_step`` beside the ``acc_step`` that ``on_step=True, on_epoch=True`` derives from ``acc``."""
        plain, _ = meta.metric_keys(True)
        keys = (plain, *meta.metric_keys(True)[1:], meta.metric_keys(False)[1]) if meta.forked else (plain,)
        for key in keys:
            owner = self.key_owners.setdefault(key, (training, meta.fx, meta.name))
            if owner == (training, meta.fx, meta.name):
                continue
            was_training, fx, name = owner
            if name != meta.name:
                trainer.warnings.warn(
                    f"The metric key `{key}` is produced twice: by `self.log({name!r}, ...)` in `{fx}` and by "
                    f"`self.log({meta.name!r}, ...)` in `{meta.fx}` (`on_step=True, on_epoch=True` adds `_step`/"
                    "`_epoch` to a name). Only one value survives in the metric dicts: rename one of them."
                )
            elif was_training != training:
                trainer.warnings.warn(
                    f"`{key}` is logged both in `{fx}` and in `{meta.fx}`: `trainer.callback_metrics[{key!r}]` (what "
                    "`ModelCheckpoint`/`EarlyStopping` monitor) holds whichever was logged last. Log them under "
                    f"different names, e.g. `train_{key}` and `val_{key}`."
                )

    def refresh(self, trainer: "Trainer") -> tuple[dict, dict, dict]:
        if self.store is None:
            return {}, {}, {}
        callback, log, pbar = self.store.metrics(trainer, on_step=not self.epoch_end_reached)
        self.callback.update(callback)
        self.logged.update(log)
        self.pbar.update(pbar)
        return callback, log, pbar

    def switch(self, trainer: "Trainer", store: Optional[ResultStore]) -> None:
        """Make ``store`` the running one. The outgoing store's step values are read first, so the
        metric dicts hold the last batch's values as they would had they been refreshed every batch."""
        if store is self.store:
            return
        if self.store is not None and not self.epoch_end_reached:
            self.refresh(trainer)
        self.store, self.epoch_end_reached = store, False

    def open_store(self, trainer: "Trainer", fx: Optional[str]) -> ResultStore:
        """The store for a ``self.log`` made while no loop runs one, as Lightning logs into the loop of the
        trainer's stage (e.g. a test that sets ``trainer.state.stage`` and calls ``training_step`` by hand).

        Raises:
            MisconfigurationException: outside training, validation and testing (e.g. in ``predict_step``).
        """
        stage = trainer.state.stage
        if stage not in (RunningStage.TRAINING, RunningStage.VALIDATING, RunningStage.TESTING,
                         RunningStage.SANITY_CHECKING):
            if fx is not None and fx not in _LOG_OPTIONS:
                raise MisconfigurationException(hook_error(fx))
            raise MisconfigurationException(
                "You are trying to `self.log()` but the loop's result collection is not registered yet. This is most"
                " likely because you are trying to log in a `predict` hook, but it doesn't support logging. (Log from"
                " a training, validation or test hook.)"
            )
        store = ResultStore(training=stage == RunningStage.TRAINING)
        if store.training:
            self.train_store = store
        self.switch(trainer, store)
        return store

    def end_epoch(self, trainer: "Trainer") -> None:
        """From now on the running store reports epoch values (after its last step values are read).

        Every rank calls this, so cross-rank reductions (``sync_dist=True``) happen here, never later on
        a path only some ranks take (e.g. a rank-zero progress bar reading the metrics).
        """
        if not self.epoch_end_reached:
            self.refresh(trainer)
        self.epoch_end_reached = True
        if self.store is not None:
            # epoch hooks log outside any batch and dataloader (no `/dataloader_idx_N` suffix, weight 1)
            self.store.new_batch(None)
        if self.store is not None and trainer.strategy.world_size > 1:
            for entry in self.store.entries.values():
                if entry.meta.on_epoch and entry.meta.sync_dist:
                    entry.compute(trainer)
                elif entry.meta.on_epoch and entry.metric is None:
                    # each rank would report the mean of its own share of the data: Lightning's warning, plus why
                    trainer.warnings.warn(
                        f"It is recommended to use `self.log({entry.meta.name!r}, ..., sync_dist=True)` when logging "
                        "on epoch level in distributed setting to accumulate the metric across devices. (Without "
                        f"it, the epoch value of {entry.meta.name!r} logged in `{entry.meta.fx}` is the reduction "
                        "over this process's batches only, and differs between ranks.)",
                        PossibleUserWarning,
                    )

    def reset(self) -> None:
        """Forget every logged value and the metric dicts: when a run starts (a `validate` after a `fit` starts
        empty) and after the sanity check (whose values must not reach the training run).

        New dicts, not cleared ones, as in Lightning: a reference to ``trainer.callback_metrics`` taken after a fit
        (``train_metrics = trainer.callback_metrics``, then ``trainer.test()``) keeps the fit's values."""
        self.callback, self.logged, self.pbar = {}, {}, {}
        self.store = self.train_store = None
        self.epoch_end_reached = False
        self.eval_step_counters = {}
        self.key_owners = {}

    # ---------------------------------------------------------------- to the loggers
    def send(self, trainer: "Trainer", metrics: dict[str, Any], step: Optional[int] = None,
             step_offset: int = 0) -> None:
        """Send metrics to every logger as Python numbers (this is where a host sync happens).

        Without an explicit ``step``, ``epoch`` is added and the step is ``batches_that_stepped`` (+ offset).
        """
        if not trainer.loggers or not metrics:
            return
        scalars = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        if step is None:
            step = scalars.pop("step", None)
        if step is None:
            scalars.setdefault("epoch", trainer.current_epoch)
            step = trainer.progress.batches_that_stepped + step_offset
        for logger in trainer.loggers:
            # no `logger.save()` here: loggers buffer and flush on their own interval; the trainer saves them
            # at epoch ends (a flush to disk every log interval costs more than the training step)
            logger.log_metrics(metrics=scalars, step=int(step))

    def log_train_step(self, trainer: "Trainer") -> None:
        """Send the step's values to the loggers (the loop calls this every ``log_every_n_steps`` steps)."""
        _, log, _ = self.refresh(trainer)
        self.send(trainer, log)

    def log_train_epoch(self, trainer: "Trainer") -> None:
        _, log, _ = self.refresh(trainer)
        # Lightning logs epoch-end training metrics at the step of the epoch's last batch
        self.send(trainer, log, step_offset=-1)
        for logger in trainer.loggers:
            logger.save()

    def log_eval_step(self, trainer: "Trainer", stage: RunningStage, dataloader_idx: int) -> None:
        store = self.store
        if stage == RunningStage.SANITY_CHECKING or not trainer.loggers or not store.has_step_entries:
            return
        # only the running dataloader's step values (another dataloader's are from its last batch)
        callback, log, pbar = store.metrics(trainer, on_step=True, dataloader_idx=store.dataloader_idx)
        self.callback.update(callback)
        self.logged.update(log)
        self.pbar.update(pbar)
        # step-level evaluation metrics are logged against a per-dataloader batch counter of this loop
        counters = self.eval_step_counters.setdefault(stage, {})
        step = counters.get(dataloader_idx, 0)
        counters[dataloader_idx] = step + 1
        self.send(trainer, log, step=step)

    def log_eval_epoch(self, trainer: "Trainer", stage: RunningStage, num_dataloaders: int) -> list[dict[str, float]]:
        """Send the evaluation run's epoch values; returns one dict of them per dataloader, as floats."""
        _, log, _ = self.refresh(trainer)
        if stage == RunningStage.SANITY_CHECKING:
            return []
        self.send(trainer, dict(log))
        for logger in trainer.loggers:
            logger.save()
        store = self.store
        if store is None or num_dataloaders <= 1:
            per_loader = [log] * num_dataloaders
        else:
            # each dataloader's values (by where they were logged, whatever their name), then what the epoch hooks
            # logged, which every dataloader's dict gets (Lightning's)
            shared = store.metrics(trainer, on_step=False, dataloader_idx=None)[1]
            per_loader = [{**store.metrics(trainer, on_step=False, dataloader_idx=idx)[1], **shared}
                          for idx in range(num_dataloaders)]
        return [{k: (v.item() if isinstance(v, Tensor) else v) for k, v in d.items()} for d in per_loader]
