"""One place that calls hooks: callbacks first, then the LightningModule.

Per hook, the objects that override it are found once per run, so a hook nobody overrides costs a
dict lookup and an empty loop. When a profiler is on, each call is wrapped in its ``profile``
context; when it is off there is no context at all. The name of the running hook is kept on the
trainer (a plain attribute) so ``self.log`` can check where it is called from.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from featherlight.callbacks.callback import Callback
from featherlight.core.hooks import SHARED_HOOKS

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

def _is_overridden(obj: Any, name: str, parent: type) -> bool:
    """Whether ``obj.name`` is not ``parent``'s implementation (seen through ``functools.wraps`` and
    ``partial``, and including functions set on the instance)."""
    attr = getattr(obj, name, None)
    if attr is None:
        return False
    attr = getattr(attr, "__wrapped__", attr)
    if isinstance(attr, functools.partial):
        attr = attr.func
    code = getattr(getattr(attr, "__func__", attr), "__code__", None)
    base = getattr(parent, name, None)
    if base is None:
        return True
    return code is None or code is not getattr(base, "__code__", None)


def _module_overrides(module: Any, name: str) -> bool:
    """Lightning's ``is_overridden`` for the module (decides behaviour, e.g. which dataloader to use)."""
    from featherlight.core.module import LightningModule

    return _is_overridden(module, name, LightningModule)


def _needs_call(obj: Any, name: str, parent: type) -> bool:
    """Whether a hook call can do anything: False only when ``obj`` uses ``parent``'s own (no-op) method.
    Anything set on the instance counts, so wrappers and recorders are always called."""
    if name in getattr(obj, "__dict__", {}):
        return True
    return getattr(type(obj), name, None) is not getattr(parent, name, None)


def _callback_overrides(cb: Callback, name: str) -> bool:
    return _needs_call(cb, name, Callback)


class _Dispatcher:
    """Calls hooks on the trainer's callbacks and module, skipping objects that don't override them."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.callbacks: dict[str, tuple[Callable, ...]] = {}
        self.late_callbacks: dict[str, tuple[Callable, ...]] = {}
        self.module: dict[str, Callable | None] = {}
        self._profiling = False
        self._profiler: Any = None
        self._module_obj: Any = None
        self._plan: dict[str, Any] = {hook: None for hook in SHARED_HOOKS}
        self._runners: dict[str, Callable | None] = dict.fromkeys(SHARED_HOOKS)

    def rebuild(self) -> None:
        """Find, per hook, who overrides it. Called when a run starts (callbacks or module may change)."""
        trainer = self.trainer
        module = trainer.lightning_module
        profiler = trainer.profiler
        profiling = not getattr(profiler, "_is_passthrough", False)
        self.callbacks.clear()
        self.late_callbacks.clear()
        self.module.clear()
        # a callback may name hooks that can do nothing in this run (`_idle_hooks`, asked after setup), e.g.
        # ModelCheckpoint's per-batch check without a per-step trigger; they stay in when profiling, for the report
        idle = {id(cb): (set() if profiling else cb._idle_hooks()) for cb in trainer.callbacks
                if hasattr(cb, "_idle_hooks")}
        for hook in SHARED_HOOKS:
            early, late = [], []
            for cb in trainer.callbacks:
                if _callback_overrides(cb, hook) and hook not in idle.get(id(cb), ()):
                    fn = getattr(cb, hook)
                    if profiling:
                        fn = _profiled(profiler, f"[Callback]{cb.state_key}.{hook}", fn)
                    (late if getattr(cb, "_monitors_metrics", False) else early).append(fn)
            if hook == "on_train_epoch_end":
                # metric-monitoring callbacks (checkpointing, early stopping) run after the module here,
                # so they see what the module logged at epoch end.
                self.callbacks[hook] = tuple(early)
                self.late_callbacks[hook] = tuple(late)
            else:
                self.callbacks[hook] = tuple(early + late)
        self._profiling = profiling
        self._profiler = profiler
        self._module_obj = module
        # per hook: (callbacks before the module, the module's method, callbacks after), or None when
        # nobody overrides it, so an unused hook costs one dict lookup
        self._plan: dict[str, Any] = {}
        self._runners: dict[str, Callable | None] = {}
        for hook in SHARED_HOOKS:
            early, fn, late = self.callbacks[hook], self.module_hook(hook), self.late_callbacks.get(hook, ())
            plan = (early, fn, late) if (early or fn is not None or late) else None
            self._plan[hook] = plan
            self._runners[hook] = None if plan is None else self._runner(hook, *plan)

    def module_hook(self, hook: str) -> Callable | None:
        try:
            return self.module[hook]
        except KeyError:
            module = self._module_obj
            from featherlight.core.module import LightningModule

            fn = getattr(module, hook) if module is not None and _needs_call(module, hook, LightningModule) else None
            if fn is not None and self._profiling:
                fn = _profiled(self._profiler, f"[LightningModule]{type(module).__name__}.{hook}", fn)
            self.module[hook] = fn
            return fn

    def _runner(self, hook: str, early: tuple, fn: Callable | None, late: tuple) -> Callable:
        """One hook's calls, in order: callbacks, the module (whose result is returned), late callbacks."""
        trainer = self.trainer

        def run(*args: Any) -> Any:
            prev = trainer._current_fx
            trainer._current_fx = hook
            module = trainer.lightning_module
            for cb_fn in early:
                cb_fn(trainer, module, *args)
            out = fn(*args) if fn is not None else None
            for cb_fn in late:
                cb_fn(trainer, module, *args)
            trainer._current_fx = prev
            return out

        return run

    def hook(self, hook: str) -> Callable | None:
        """What ``call(hook, ...)`` runs, or None when nobody overrides ``hook``: the per-batch loop resolves its
        hooks once per epoch, so an unused one costs a ``None`` test."""
        return self._runners[hook]

    def reads_outputs(self, hook: str) -> bool:
        """Whether anyone overriding a batch-end ``hook`` may read its ``outputs`` (built only if so): False
        only when every override is a featherlight method marked ``_outputs_unused``."""
        plan = self._plan[hook]
        if plan is None:
            return False
        early, fn, late = plan
        return fn is not None or not all(getattr(cb_fn, "_outputs_unused", False) for cb_fn in early + late)

    def call(self, hook: str, *args: Any) -> Any:
        """Call ``hook`` on every callback that overrides it, then on the module; returns the module's result."""
        run = self._runners[hook]
        return None if run is None else run(*args)

    def call_callbacks(self, hook: str, *args: Any) -> None:
        trainer = self.trainer
        prev = trainer._current_fx
        trainer._current_fx = hook
        module = trainer.lightning_module
        for fn in self.callbacks[hook] + self.late_callbacks.get(hook, ()):
            fn(trainer, module, *args)
        trainer._current_fx = prev


def _profiled(profiler: Any, action: str, fn: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with profiler.profile(action):
            return fn(*args, **kwargs)

    return wrapper


def _call_module_hook(trainer: "Trainer", hook: str, *args: Any, **kwargs: Any) -> Any:
    """Call a module-only hook (``configure_optimizers``, ``prepare_data``...) and return its result."""
    module = trainer.lightning_module
    fn = getattr(module, hook)
    prev = trainer._current_fx
    trainer._current_fx = hook
    try:
        if trainer._dispatch._profiling:
            with trainer.profiler.profile(f"[LightningModule]{type(module).__name__}.{hook}"):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    finally:
        trainer._current_fx = prev
