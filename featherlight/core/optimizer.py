"""Optimizers as the user's step sees them, and ``configure_optimizers`` in every Lightning form."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.types import LRSchedulerConfig


def _do_nothing_closure() -> None:
    return None


_WRAPPER_CLASSES: dict[type, type] = {}


def _wrapper_class(optimizer_class: type) -> type:
    """``Lightning<Name>``: a subclass of LightningOptimizer and of the optimizer's class, made once per class."""
    cls = _WRAPPER_CLASSES.get(optimizer_class)
    if cls is None:
        cls = type("Lightning" + optimizer_class.__name__, (LightningOptimizer, optimizer_class), {})
        _WRAPPER_CLASSES[optimizer_class] = cls
    return cls


class LightningOptimizer:
    """A thin wrapper whose ``step`` runs through the trainer's optimisation step (precision, hooks, clipping).

    Every attribute not defined here is the wrapped optimizer's, so ``opt.param_groups`` and ``opt.state``
    work as usual. ``step_fn(optimizer, closure, kwargs)`` is what ``step`` calls; the trainer gives it (its
    ``Optimization.optimizer_step``, which also counts the step into ``trainer.global_step``). Without one,
    ``step`` is the optimizer's own.

    As in Lightning, the wrapper's class derives from the wrapped optimizer's (``LightningSGD`` for an ``SGD``), so
    ``isinstance(self.optimizers(), torch.optim.SGD)`` holds and ``str()`` reads ``LightningSGD (...)``. The
    optimizer's own ``__init__`` never runs on the wrapper: its state stays the wrapped optimizer's.
    """

    def __init__(self, optimizer: Optimizer,
                 step_fn: Optional[Callable[[Optimizer, Callable, dict], Any]] = None) -> None:
        self._optimizer = optimizer
        self._step_fn = step_fn
        # imitate the wrapped class so that isinstance checks in user code see the optimizer they returned
        self.__class__ = _wrapper_class(type(optimizer))

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        if name == "_optimizer" or name.startswith("__"):  # unpickling/copying: the wrapped one isn't set yet
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __reduce__(self) -> tuple:
        # the class is made at run time: copy and pickle by rebuilding the wrapper around the same optimizer
        return LightningOptimizer, (self._optimizer, self._step_fn)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._optimizer.load_state_dict(state_dict)

    def step(self, closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
        """Step the optimizer through the trainer's precision.

        ``closure`` re-evaluates the loss (training step and backward); in automatic optimization it
        is the one the loop hands to ``LightningModule.optimizer_step``. Returns what the optimizer's
        ``step`` returns.
        """
        step_fn = self._step_fn
        if step_fn is None:
            return self._optimizer.step(closure=closure, **kwargs) if closure else self._optimizer.step(**kwargs)
        return step_fn(self._optimizer, closure or _do_nothing_closure, kwargs)


_SCHEDULER_KEYS = {f.name for f in fields(LRSchedulerConfig)}
# keys that only mean something when the trainer steps the scheduler (automatic optimization)
_AUTOMATIC_ONLY_KEYS = ("reduce_on_plateau", "monitor", "strict")


class _MockOptimizer(Optimizer):
    """What the trainer uses when ``configure_optimizers`` returns None (as Lightning does): ``step`` runs the
    closure (so ``training_step`` and backward still run) and changes nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def add_param_group(self, param_group: dict[Any, Any]) -> None:
        pass

    def load_state_dict(self, state_dict: dict[Any, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "No Optimizer"


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)) or (
        hasattr(obj, "step") and hasattr(obj, "optimizer") and not isinstance(obj, Optimizer)
    )


def optimizers_and_schedulers(out: Any, automatic: bool = True) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    """Normalise what ``configure_optimizers`` returned, in every form Lightning accepts.

    Accepted: an optimizer; a list/tuple of optimizers; ``([optimizers], [schedulers])``; a dict
    with ``"optimizer"`` and optional ``"lr_scheduler"`` (a scheduler or a config dict) and
    ``"monitor"``; a list/tuple of such dicts. ``None`` means no optimizer (a no-op one, with a warning, as in
    Lightning). With manual optimization (``automatic=False``) the trainer never steps the schedulers, so their
    ``monitor``/``strict`` keys are ignored with a warning. Anything else raises naming the accepted forms.
    """
    if out is None:
        from featherlight.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer. Return an "
            "optimizer to train (or use manual optimization)."
        )
        out = _MockOptimizer()
    optimizers, scheduler_items, monitor = _split(out)
    configs = [_scheduler_config(item, monitor) if automatic else _manual_scheduler_config(item)
               for item in scheduler_items]
    for cfg in configs:
        opt = cfg.scheduler.optimizer
        if not any(opt is o for o in optimizers):
            raise MisconfigurationException(
                "Some schedulers are attached with an optimizer that wasn't returned from `configure_optimizers`. "
                "Return the optimizer each scheduler was built with."
            )
    return optimizers, configs


_FORMS = (
    "Unknown configuration for model optimizers. Output from `model.configure_optimizers()` should be one of:\n"
    " * `Optimizer`\n"
    " * [`Optimizer`]\n"
    " * ([`Optimizer`], [`LRScheduler`])\n"
    ' * {"optimizer": `Optimizer`, (optional) "lr_scheduler": `LRScheduler`}\n'
    " * a list of such dicts\n"
)


def _split(out: Any) -> tuple[list[Optimizer], list[Any], Optional[str]]:
    if isinstance(out, Optimizer):
        return [out], [], None
    if isinstance(out, dict):
        _check_dict(out)
        sched = out.get("lr_scheduler")
        return [out["optimizer"]], ([sched] if sched is not None else []), out.get("monitor")
    if isinstance(out, (list, tuple)):
        if len(out) == 2 and isinstance(out[0], (list, tuple)) and not isinstance(out[0], Optimizer):
            opts, scheds = out
            opts = list(opts)
            scheds = list(scheds) if isinstance(scheds, (list, tuple)) else [scheds]
            _check_optimizers(opts)
            return opts, scheds, None
        if all(isinstance(o, dict) for o in out) and out:
            opts, scheds = [], []
            monitor = None
            for d in out:
                _check_dict(d)
                opts.append(d["optimizer"])
                if d.get("lr_scheduler") is not None:
                    sched = d["lr_scheduler"]
                    if not isinstance(sched, dict) and d.get("monitor") is not None:
                        sched = {"scheduler": sched, "monitor": d["monitor"]}
                    scheds.append(sched)
            return opts, scheds, monitor
        opts = list(out)
        _check_optimizers(opts)
        return opts, [], None
    raise MisconfigurationException(f"{_FORMS}It returned a {type(out).__name__}.")


def _check_optimizers(opts: list) -> None:
    for o in opts:
        if not isinstance(o, Optimizer):
            raise MisconfigurationException(f"{_FORMS}The returned list holds a {type(o).__name__}.")


def _check_dict(d: dict) -> None:
    from featherlight.utilities.rank_zero import rank_zero_warn

    if "optimizer" not in d:
        raise MisconfigurationException(f"{_FORMS}The returned dict has no 'optimizer' key (keys: {sorted(d)}).")
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        rank_zero_warn(
            f"Found unsupported keys in the optimizer configuration: {extra}. They are ignored: the keys are "
            "'optimizer', 'lr_scheduler' and 'monitor'.", category=RuntimeWarning,
        )
    if not isinstance(d["optimizer"], Optimizer):
        raise MisconfigurationException(f"{_FORMS}The dict's 'optimizer' is a {type(d['optimizer']).__name__}.")


def _known_keys(item: dict) -> dict:
    """The ``lr_scheduler`` dict without the keys it cannot have (Lightning warns and drops them)."""
    unknown = set(item) - _SCHEDULER_KEYS
    if not unknown:
        return item
    from featherlight.utilities.rank_zero import rank_zero_warn

    rank_zero_warn(
        f"Found unsupported keys in the lr scheduler dict: {unknown}. HINT: remove them from the output of "
        f"`configure_optimizers`. The keys are {sorted(_SCHEDULER_KEYS)}.", category=RuntimeWarning,
    )
    return {k: v for k, v in item.items() if k in _SCHEDULER_KEYS}


def _scheduler_config(item: Any, monitor: Optional[str]) -> LRSchedulerConfig:
    """One scheduler (or ``lr_scheduler`` dict) for automatic optimization, checked as Lightning does."""
    if isinstance(item, dict):
        item = _known_keys(item)
        if "scheduler" not in item:
            raise MisconfigurationException(
                'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler, e.g. '
                '`{"scheduler": StepLR(optimizer, 1), "interval": "epoch"}`.'
            )
        if "interval" in item and item["interval"] not in ("step", "epoch"):
            raise MisconfigurationException(
                f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{item["interval"]}"'
            )
        plateau = item.get("reduce_on_plateau")
        cfg = LRSchedulerConfig(**{k: v for k, v in item.items() if k != "reduce_on_plateau"})
        if monitor is not None and cfg.monitor is None:
            cfg.monitor = monitor  # the top-level "monitor" of the returned dict applies to its scheduler too
    else:
        plateau = None
        cfg = LRSchedulerConfig(scheduler=item, monitor=monitor)
    _check_config(cfg)
    cfg.reduce_on_plateau = bool(plateau) if plateau is not None else _is_plateau(cfg.scheduler)
    if cfg.reduce_on_plateau and cfg.monitor is None:
        if isinstance(item, dict):
            raise MisconfigurationException(
                "The lr scheduler dict must include a monitor when a `ReduceLROnPlateau` scheduler is used. For "
                'example: {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "your_loss"}}'
            )
        raise MisconfigurationException(
            "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used. For "
            'example: {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "metric_to_track"}'
        )
    if isinstance(cfg.scheduler, torch.optim.lr_scheduler.OneCycleLR) and cfg.interval == "epoch":
        from featherlight.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': 'step'?",
            category=RuntimeWarning,
        )
    return cfg


def _manual_scheduler_config(item: Any) -> LRSchedulerConfig:
    """One scheduler for manual optimization: the user steps it, so plateau/monitor settings do not apply."""
    if not isinstance(item, dict):
        cfg = LRSchedulerConfig(scheduler=item)
    else:
        item = _known_keys(item)
        ignored = [k for k in item if k in _AUTOMATIC_ONLY_KEYS]
        if ignored:
            from featherlight.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You need to call "
                "`lr_scheduler.step()` manually in manual optimization.", category=RuntimeWarning,
            )
        if "scheduler" not in item:
            raise MisconfigurationException(
                'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler.'
            )
        cfg = LRSchedulerConfig(**{k: v for k, v in item.items() if k not in _AUTOMATIC_ONLY_KEYS})
    _check_config(cfg)
    return cfg


def _check_config(cfg: LRSchedulerConfig) -> None:
    if cfg.interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{cfg.interval}"'
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise MisconfigurationException(f'The `lr_scheduler` "frequency" must be a positive int, got {cfg.frequency!r}.')
    if not _is_scheduler(cfg.scheduler):
        raise MisconfigurationException(
            f"`configure_optimizers` returned {type(cfg.scheduler).__name__} where a learning-rate scheduler was expected."
        )


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or bool(
        getattr(scheduler, "_is_reduce_on_plateau", False)
    )
