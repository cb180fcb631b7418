"""Optimizers as the user's step sees them, and ``configure_optimizers`` in every Lightning form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from featherlight.utilities.exceptions import MisconfigurationException


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


@dataclass
class LRSchedulerConfig:
    """One scheduler and when it steps (Lightning's ``lr_scheduler`` dict as a dataclass)."""

    scheduler: Any
    name: Optional[str] = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: Optional[str] = None
    strict: bool = True
    opt_idx: Optional[int] = None


_SCHEDULER_KEYS = {"scheduler", "name", "interval", "frequency", "monitor", "strict", "reduce_on_plateau", "opt_idx"}


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)) or (
        hasattr(obj, "step") and hasattr(obj, "optimizer") and not isinstance(obj, Optimizer)
    )


def optimizers_and_schedulers(out: Any) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    """Normalise what ``configure_optimizers`` returned, in every form Lightning accepts.

    Accepted: an optimizer; a list/tuple of optimizers; ``([optimizers], [schedulers])``; a dict
    with ``"optimizer"`` and optional ``"lr_scheduler"`` (a scheduler or a config dict) and
    ``"monitor"``; a list/tuple of such dicts. Anything else raises naming the accepted forms.
    """
    if out is None:
        from featherlight.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer. "
            "Return an optimizer to train (or use manual optimization)."
        )
        return [], []
    optimizers, scheduler_items, monitor = _split(out)
    configs = [_scheduler_config(item, monitor) for item in scheduler_items]
    for cfg in configs:
        opt = cfg.scheduler.optimizer
        if not any(opt is o for o in optimizers):
            raise MisconfigurationException(
                "`configure_optimizers` returned a scheduler whose optimizer is not among the returned optimizers; "
                "return the optimizer that the scheduler was built with."
            )
    return optimizers, configs


_FORMS = (
    "`configure_optimizers` must return one of: an optimizer; a list of optimizers; "
    "`([optimizers], [schedulers])`; a dict `{'optimizer': opt, 'lr_scheduler': scheduler_or_config, "
    "'monitor': name}`; or a list of such dicts."
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
    raise MisconfigurationException(f"{_FORMS} It returned {type(out).__name__}.")


def _check_optimizers(opts: list) -> None:
    for o in opts:
        if not isinstance(o, Optimizer):
            raise MisconfigurationException(f"{_FORMS} The returned list holds a {type(o).__name__}.")


def _check_dict(d: dict) -> None:
    if "optimizer" not in d:
        raise MisconfigurationException(f"{_FORMS} The returned dict has no 'optimizer' key (keys: {sorted(d)}).")
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        raise MisconfigurationException(
            f"`configure_optimizers` returned a dict with unknown keys {sorted(extra)}; allowed keys are "
            "'optimizer', 'lr_scheduler' and 'monitor'."
        )
    if not isinstance(d["optimizer"], Optimizer):
        raise MisconfigurationException(f"{_FORMS} The dict's 'optimizer' is a {type(d['optimizer']).__name__}.")


def _scheduler_config(item: Any, monitor: Optional[str]) -> LRSchedulerConfig:
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise MisconfigurationException(
                'The `lr_scheduler` dict returned by `configure_optimizers` must hold the scheduler under "scheduler".'
            )
        unknown = set(item) - _SCHEDULER_KEYS
        if unknown:
            raise MisconfigurationException(
                f"Unknown key(s) {sorted(unknown)} in the `lr_scheduler` dict; allowed: {sorted(_SCHEDULER_KEYS)}."
            )
        cfg = LRSchedulerConfig(**{k: v for k, v in item.items() if k != "reduce_on_plateau"})
        if monitor is not None and cfg.monitor is None:
            cfg.monitor = monitor
    else:
        cfg = LRSchedulerConfig(scheduler=item, monitor=monitor)
    if cfg.interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f'The `lr_scheduler` "interval" must be "step" or "epoch", got {cfg.interval!r}.'
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise MisconfigurationException(f'The `lr_scheduler` "frequency" must be a positive int, got {cfg.frequency!r}.')
    if not _is_scheduler(cfg.scheduler):
        raise MisconfigurationException(
            f"`configure_optimizers` returned {type(cfg.scheduler).__name__} where a learning-rate scheduler was expected."
        )
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or bool(
        getattr(cfg.scheduler, "_is_reduce_on_plateau", False)
    )
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise MisconfigurationException(
            "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used, e.g. "
            '`{"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "val_loss"}`.'
        )
    return cfg
