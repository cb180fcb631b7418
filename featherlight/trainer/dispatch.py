"""One place that calls hooks (``trainer.hooks``): callbacks first, then the LightningModule.

Per hook, the objects whose implementation can do something are found once per run, so a hook nobody
overrides costs a ``None`` test. When a profiler is on, each call is wrapped in its ``profile`` context;
when it is off there is no context at all. ``current`` is the name of the running hook (a plain attribute),
which is how ``self.log`` knows where it is called from.

What a callback may declare to the dispatcher (see :class:`~featherlight.callbacks.Callback`):
``monitors_metrics`` (run after the module at ``on_train_epoch_end``), ``idle_hooks`` (hooks that can do
nothing in this run) and ``reads_outputs`` (whether ``on_train_batch_end`` reads its ``outputs``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from featherlight.callbacks.callback import Callback
from featherlight.core.hooks import SHARED_HOOKS
from featherlight.core.module import LightningModule
from featherlight.profilers.profiler import PassThroughProfiler
from featherlight.utilities.model_helpers import has_effect

_NO_PROFILE = contextlib.nullcontext()


class HookDispatcher:
    """Calls hooks on the trainer's callbacks and module, skipping objects whose hook can do nothing.

    ``rebuild()`` (when a run starts, and after the strategy set the module up) finds who overrides what;
    ``call(hook, *args)`` runs a shared hook, ``hook(name)`` gives the loop the same runner (or None) to call
    per batch, ``call_module(hook, ...)`` runs a module-only hook (``configure_optimizers``...).
    """

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.current: Optional[str] = None  # the hook running now (``self.log`` reads it)
        self.profiling = False
        self.profiler: Any = None
        self.callbacks: dict[str, tuple[Callable, ...]] = {}
        self.late_callbacks: dict[str, tuple[Callable, ...]] = {}
        self._module_obj: Any = None
        self._module_hooks: dict[str, Optional[Callable]] = {}
        self._plan: dict[str, Any] = dict.fromkeys(SHARED_HOOKS)
        self._runners: dict[str, Optional[Callable]] = dict.fromkeys(SHARED_HOOKS)
        self._readers: dict[str, bool] = {}  # per hook: may a callback overriding it read its ``outputs``?

    def rebuild(self) -> None:
        """Find, per hook, who overrides it. Called when a run starts (callbacks or module may change)."""
        trainer = self.trainer
        profiler = trainer.profiler
        profiling = not isinstance(profiler, PassThroughProfiler)
        self.profiling, self.profiler = profiling, profiler
        self._module_obj = trainer.lightning_module
        self._module_hooks = {}
        self.callbacks.clear()
        self.late_callbacks.clear()
        self._readers.clear()
        # hooks a callback declares idle in this run (e.g. ModelCheckpoint's per-batch check without a per-step
        # trigger) are skipped; they stay in when profiling, for the report
        idle = {id(cb): _declared_set(cb.idle_hooks(trainer)) for cb in trainer.callbacks
                if not profiling and _declares(cb, "idle_hooks")}
        for hook in SHARED_HOOKS:
            early, late = [], []
            for cb in trainer.callbacks:
                if has_effect(hook, cb, Callback) and hook not in idle.get(id(cb), ()):
                    fn = getattr(cb, hook)
                    if profiling:
                        fn = _profiled(profiler, f"[Callback]{cb.state_key}.{hook}", fn)
                    (late if getattr(cb, "monitors_metrics", False) is True else early).append((cb, fn))
            if hook == "on_train_epoch_end":
                # metric-monitoring callbacks (checkpointing, early stopping) run after the module here, so they
                # see what the module logged at epoch end
                self.callbacks[hook] = tuple(fn for _, fn in early)
                self.late_callbacks[hook] = tuple(fn for _, fn in late)
            else:
                self.callbacks[hook] = tuple(fn for _, fn in early + late)
            self._readers[hook] = any(not _declares(cb, "reads_outputs") or cb.reads_outputs(hook) is not False
                                      for cb, _ in early + late)
        # per hook: (callbacks before the module, the module's method, callbacks after), or None when nobody
        # overrides it, so an unused hook costs one dict lookup
        self._plan, self._runners = {}, {}
        for hook in SHARED_HOOKS:
            early, fn, late = self.callbacks[hook], self.module_hook(hook), self.late_callbacks.get(hook, ())
            plan = (early, fn, late) if (early or fn is not None or late) else None
            self._plan[hook] = plan
            self._runners[hook] = None if plan is None else self._runner(hook, *plan)

    def module_hook(self, hook: str) -> Optional[Callable]:
        """The module's ``hook`` (profiled when profiling), or None when calling it can do nothing."""
        try:
            return self._module_hooks[hook]
        except KeyError:
            module = self._module_obj
            fn = getattr(module, hook) if module is not None and has_effect(hook, module, LightningModule) else None
            if fn is not None and self.profiling:
                fn = _profiled(self.profiler, f"[LightningModule]{type(module).__name__}.{hook}", fn)
            self._module_hooks[hook] = fn
            return fn

    def _runner(self, hook: str, early: tuple, fn: Optional[Callable], late: tuple) -> Callable:
        """One hook's calls, in order: callbacks, the module (whose result is returned), late callbacks."""
        trainer = self.trainer

        def run(*args: Any) -> Any:
            prev, self.current = self.current, hook
            module = trainer.lightning_module
            for cb_fn in early:
                cb_fn(trainer, module, *args)
            out = fn(*args) if fn is not None else None
            for cb_fn in late:
                cb_fn(trainer, module, *args)
            self.current = prev
            return out

        return run

    def hook(self, hook: str) -> Optional[Callable]:
        """What ``call(hook, ...)`` runs, or None when nobody overrides ``hook``: the per-batch loop resolves its
        hooks once per epoch, so an unused one costs a ``None`` test."""
        return self._runners[hook]

    def has(self, hook: str) -> bool:
        """Whether anyone (a callback or the module) does something at ``hook``."""
        return self._plan[hook] is not None

    def reads_outputs(self, hook: str) -> bool:
        """Whether anyone overriding a batch-end ``hook`` may read its ``outputs`` (built only if so): the
        module always may; a callback may unless it declares otherwise (``Callback.reads_outputs``)."""
        plan = self._plan[hook]
        if plan is None:
            return False
        return plan[1] is not None or self._readers.get(hook, True)

    def call(self, hook: str, *args: Any) -> Any:
        """Call ``hook`` on every callback that overrides it, then on the module; returns the module's result."""
        run = self._runners[hook]
        return None if run is None else run(*args)

    def call_callbacks(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on the callbacks only (``setup``, ``teardown``, ``on_save_checkpoint``...)."""
        trainer = self.trainer
        prev, self.current = self.current, hook
        module = trainer.lightning_module
        for fn in self.callbacks[hook] + self.late_callbacks.get(hook, ()):
            fn(trainer, module, *args)
        self.current = prev

    def call_module(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Call a module-only hook (``configure_optimizers``, ``prepare_data``...) and return its result."""
        module = self.trainer.lightning_module
        fn = getattr(module, hook)
        prev, self.current = self.current, hook
        try:
            if self.profiling:
                with self.profiler.profile(f"[LightningModule]{type(module).__name__}.{hook}"):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            self.current = prev

    def call_datamodule(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Call a datamodule hook (``prepare_data``, ``setup``, ``state_dict``, ``teardown``...) and return its
        result (profiled as ``[LightningDataModule]{class}.{hook}``, Lightning's name)."""
        datamodule = self.trainer.datamodule
        fn = getattr(datamodule, hook)
        prev, self.current = self.current, hook
        try:
            if self.profiling:
                with self.profiler.profile(f"[LightningDataModule]{type(datamodule).__name__}.{hook}"):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            self.current = prev

    # ---------------------------------------------------------------- profiling
    def profiled(self, fn: Callable, action: str) -> Callable:
        """``fn`` itself when profiling is off (no per-call cost); else ``fn`` inside ``profile(action)``."""
        return _profiled(self.profiler, action, fn) if self.profiling else fn

    def profile(self, action: str) -> contextlib.AbstractContextManager:
        """A context for a once-per-epoch action: the profiler's, or a shared no-op."""
        return self.profiler.profile(action) if self.profiling else _NO_PROFILE

    def profiled_iter(self, loader: Any, stage: str) -> Iterator:
        """``iter(loader)``; when profiling, each ``next`` is recorded as Lightning names it."""
        it = iter(loader)
        if not self.profiling:
            return it
        profiler = self.profiler
        action = f"[_{'Training' if stage == 'train' else 'Evaluation'}EpochLoop].{stage}_dataloader_next"

        def gen() -> Iterator:
            while True:
                with profiler.profile(action):
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                yield batch

        return gen()


def _declares(cb: Any, name: str) -> bool:
    """Whether ``cb`` replaces the base :class:`Callback`'s declaration method ``name``: in its class, or set on the
    instance (``LambdaCallback(idle_hooks=...)``). A mock standing in for a callback (``Mock(spec=Callback)``) makes
    its attributes up on access, in neither place: it declares nothing and is not asked, so its recorded calls
    stay the hooks the trainer calls, as in Lightning."""
    if name in getattr(cb, "__dict__", {}):
        return True
    method = getattr(type(cb), name, None)
    return method is not None and method is not getattr(Callback, name)


def _declared_set(value: Any) -> set:
    """What a callback declared, if it is a set of names (a mock standing in for a callback declares nothing)."""
    return set(value) if isinstance(value, (set, frozenset, list, tuple)) else set()


def _profiled(profiler: Any, action: str, fn: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with profiler.profile(action):
            return fn(*args, **kwargs)

    return wrapper
