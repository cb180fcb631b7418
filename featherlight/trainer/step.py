"""One optimisation step, automatic or manual, with everything it needs decided once per run or epoch.

``trainer.optimization`` is built when a fit has its optimizers. Its ``__init__`` decides the per-run switches
(loss scaling, a strategy's pre-backward, the module's ``backward``, clipping, profiling, whether the step
can be taken directly); ``automatic_step()`` / ``manual_step()`` build the epoch's
``step(batch, batch_idx, is_last) -> (outputs, stepped)``, the only thing the fit loop calls per batch.

One batch of automatic optimisation, in order::

    training_step            under the precision's forward context (autocast), through the strategy (DDP)
    zero_grad                at the first batch of an accumulation window
    loss / accumulate -> on_before_backward -> (scaled) backward -> on_after_backward
    at the batch that closes the window:
        optimizer_step(closure)      the module's hook; the closure is the lines above
          -> unscale -> on_before_optimizer_step -> clip -> precision's step (GradScaler may skip it)
        global_step += 1             the loop then steps the schedulers if the optimizer really stepped

When nothing customises that step (no ``optimizer_step`` override, full precision, one optimizer that
evaluates its closure once, no profiler) the same work runs without the closure indirections.
``backward``, ``optimizer_step`` and ``clip_gradients`` are also what ``manual_backward``,
``LightningOptimizer.step`` and ``clip_gradients`` of the user's code run.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional

from torch import Tensor

from featherlight.core.module import LightningModule
from featherlight.core.optimizer import LightningOptimizer
from featherlight.precision.precision import _EVALUATES_CLOSURE_ONCE, Precision
from featherlight.strategies.strategy import Strategy
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import has_effect
from featherlight.utilities.signature_utils import drop_batch_idx, is_param_in_hook_signature

_NOT_RUN = object()  # marks a closure the user's optimizer_step never called
StepFn = Callable[[Any, int, bool], "tuple[Any, bool]"]


class Optimization:
    """The optimisation step of one fit (``trainer.optimization``), its switches resolved once."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        module = trainer.lightning_module
        strategy, precision, hooks = trainer.strategy, trainer.precision_plugin, trainer.hooks
        self.module, self.precision, self.hooks = module, precision, hooks
        # through the strategy's wrapper, so e.g. DDP's forward hooks fire; profiled in the forward context below
        self.training_step = strategy.step_function("training_step")
        if not is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2):
            # a `training_step(self, batch)`: Lightning reads the signature and leaves `batch_idx` out (one frame
            # more per step for such modules only, decided here once per run)
            self.training_step = drop_batch_idx(self.training_step)
        # a hook nobody overrides costs nothing per step: each is None unless it can do something
        self.scale_loss = precision.scale_loss if has_effect("scale_loss", precision, Precision) else None
        self.pre_backward = strategy.pre_backward if has_effect("pre_backward", strategy, Strategy) else None
        self.gradient_sync = strategy.set_gradient_sync if has_effect("set_gradient_sync", strategy, Strategy) else None
        self.backward_hook = hooks.module_hook("backward")
        self.clip_active = bool(trainer.gradient_clip_val) or \
            hooks.module_hook("configure_gradient_clipping") is not None
        context = precision.forward_context if has_effect("forward_context", precision, Precision) else None
        if hooks.profiling:  # the step's profile entry comes with the forward, not as a wrapper frame
            context = _profiled_context(hooks.profile, f"[Strategy]{type(strategy).__name__}.training_step", context)
        self.forward_context: Optional[Callable[[], contextlib.AbstractContextManager]] = context
        self.plain = (module.automatic_optimization and len(trainer.optimizers) == 1
                      and type(trainer.optimizers[0]) in _EVALUATES_CLOSURE_ONCE and type(precision) is Precision
                      and not hooks.profiling and not has_effect("optimizer_step", module, LightningModule))
        # what `self.optimizers()` returns: each optimizer's step runs through this object's `optimizer_step`
        strategy.lightning_optimizers = [LightningOptimizer(o.optimizer if isinstance(o, LightningOptimizer) else o,
                                                            self.optimizer_step) for o in trainer.optimizers]

    # ================================================================== the epoch's step
    def automatic_step(self) -> StepFn:
        """This epoch's step of automatic optimisation (everything it reads is resolved here, per epoch).

        Every batch runs ``forward_backward`` (training_step, zero_grad at the start of an accumulation
        window, backward); the batch that closes a window also steps the optimizer, through the module's
        ``optimizer_step`` and a closure as in Lightning, or directly when nothing customises the step.
        """
        trainer, module, hooks = self.trainer, self.module, self.hooks
        progress = trainer.progress
        hook = hooks.hook
        training_step, forward_context = self.training_step, self.forward_context
        backward = self.backward if self.customises_backward() else None  # else `loss.backward()` directly
        optimizer = trainer.strategy.lightning_optimizers[0]
        raw_optimizer = optimizer.optimizer
        accumulate = trainer.accumulate_grad_batches  # a callback may change it between epochs
        plain, clip = self.plain, self.clip_active
        sync = self.gradient_sync if accumulate > 1 else None  # DDP: all-reduce only when a window closes
        before_zero_grad, before_optimizer_step = hook("on_before_zero_grad"), hook("on_before_optimizer_step")
        # the module's optimizer_zero_grad when overridden; else what Lightning's default does, called directly
        zero_grad = module.optimizer_zero_grad if has_effect("optimizer_zero_grad", module, LightningModule) else None
        # `outputs` for on_train_batch_end are built only if a hook may read them
        wants_outputs = hooks.reads_outputs("on_train_batch_end")
        warn = self.trainer.warnings.warn

        last: list = [None, None]  # (output, loss) of the latest forward_backward, read by `step` right after

        def forward_backward(batch: Any, batch_idx: int) -> Optional[Tensor]:
            """What the optimizer's closure runs: training_step, zero_grad at a window's start, backward. Returns
            the loss it backpropagated (None for a skipped batch); leaves the output and the loss in ``last``."""
            hooks.current = "training_step"
            if forward_context is None:
                output = training_step(batch, batch_idx)
            else:
                with forward_context():
                    output = training_step(batch, batch_idx)
            hooks.current = None
            loss = output if type(output) is Tensor else _loss_from_output(output)
            if batch_idx % accumulate == 0:
                if before_zero_grad is not None:
                    before_zero_grad(raw_optimizer)
                if zero_grad is None:
                    raw_optimizer.zero_grad()
                else:
                    hooks.current = "optimizer_zero_grad"
                    zero_grad(progress.epoch, batch_idx, raw_optimizer)
                    hooks.current = None
            if loss is None:
                what = "`None`" if output is None else "a dict whose 'loss' is `None`"
                warn(f"`training_step` returned {what}. If this was on purpose, ignore this warning: the batch is "
                     "skipped (no backward, no optimizer step). Otherwise end `training_step` with `return loss` (or "
                     "`return {'loss': loss, ...}`): a step that computes the loss but returns nothing trains nothing.")
            else:
                if accumulate > 1:
                    loss = loss / accumulate
                if backward is None:
                    loss.backward()
                else:
                    backward(loss, raw_optimizer)
            last[0], last[1] = output, loss
            return loss

        def step(batch: Any, batch_idx: int, is_last: bool) -> tuple[Any, bool]:
            if (batch_idx + 1) % accumulate and not is_last:  # inside an accumulation window: no optimizer step
                if sync is not None:
                    sync(False)
                forward_backward(batch, batch_idx)
                stepped = False
            else:
                if sync is not None:
                    sync(True)
                if plain:
                    forward_backward(batch, batch_idx)
                    if before_optimizer_step is not None:
                        before_optimizer_step(raw_optimizer)
                    if clip:
                        self.clip_gradients(raw_optimizer)
                    raw_optimizer.step()
                    progress.global_step += 1
                else:
                    last[0] = _NOT_RUN
                    hooks.current = "optimizer_step"
                    # the closure is forward_backward bound to this batch: no frame of ours between the optimizer
                    # and it
                    module.optimizer_step(progress.epoch, batch_idx, optimizer,
                                          functools.partial(forward_backward, batch, batch_idx))
                    hooks.current = None
                    if last[0] is _NOT_RUN:
                        raise MisconfigurationException(
                            "The closure wasn't executed. `optimizer_step` must call "
                            "`optimizer.step(closure=optimizer_closure)` (or `optimizer_closure()`): it runs "
                            "training_step and backward."
                        )
                stepped = True
            output, loss = last
            last[0] = last[1] = None  # the loss keeps its autograd nodes alive: don't hold it past the step
            return (_batch_outputs(output, loss) if wants_outputs else output), stepped

        return step

    def manual_step(self) -> StepFn:
        """This epoch's step of manual optimisation: the user's ``training_step`` steps the optimizers itself."""
        hooks, training_step, forward_context = self.hooks, self.training_step, self.forward_context

        def step(batch: Any, batch_idx: int, is_last: bool) -> tuple[Any, bool]:
            hooks.current = "training_step"
            if forward_context is None:
                output = training_step(batch, batch_idx)
            else:
                with forward_context():
                    output = training_step(batch, batch_idx)
            hooks.current = None
            if output is None:
                return {}, True
            if isinstance(output, Tensor):
                return {"loss": output.detach()}, True
            if isinstance(output, dict):
                return {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in output.items()}, True
            raise MisconfigurationException(
                f"In manual optimization, `training_step` must return a Tensor, a dict or None; it returned "
                f"{type(output).__name__}."
            )

        return step

    # ================================================================== the pieces the user's code runs too
    def customises_backward(self) -> bool:
        """Whether anything beyond ``loss.backward()`` happens in :meth:`backward` this run."""
        hooks = self.hooks
        return hooks.has("on_before_backward") or hooks.has("on_after_backward") or self.scale_loss is not None \
            or self.pre_backward is not None or self.backward_hook is not None

    def backward(self, loss: Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """on_before_backward -> (scaled) backward through the module's ``backward`` hook -> on_after_backward."""
        hooks = self.hooks
        hooks.call("on_before_backward", loss)
        scaled = self.scale_loss(loss) if self.scale_loss is not None else loss
        if self.pre_backward is not None:
            self.pre_backward(scaled)
        if self.backward_hook is not None:
            prev, hooks.current = hooks.current, "backward"
            self.backward_hook(scaled, *args, **kwargs)
            hooks.current = prev
        else:
            scaled.backward(*args, **kwargs)
        hooks.call("on_after_backward")

    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], kwargs: dict) -> Any:
        """The step behind ``LightningOptimizer.step``: closure, unscale, ``on_before_optimizer_step``, clipping,
        then the precision's step; counts it into ``global_step``."""
        precision, hooks = self.precision, self.hooks
        clip = self.module.automatic_optimization and self.clip_active

        def closure_then_clip() -> Any:
            out = closure()
            precision.unscale_gradients(optimizer)
            hooks.call("on_before_optimizer_step", optimizer)
            if clip:
                self.clip_gradients(optimizer)
            return out

        out, stepped = precision.optimizer_step(optimizer, closure_then_clip, **kwargs)
        progress = self.trainer.progress
        progress.last_step_skipped = not stepped
        progress.global_step += 1
        return out

    def clip_gradients(self, optimizer: Any) -> None:
        trainer = self.trainer
        self.hooks.call_module("configure_gradient_clipping", optimizer, gradient_clip_val=trainer.gradient_clip_val,
                               gradient_clip_algorithm=trainer.gradient_clip_algorithm)

    def step_schedulers(self, interval: str, batch_idx: Optional[int], plateau: bool = False,
                        resumed: bool = False) -> None:
        """Step the schedulers of ``interval`` whose frequency is due (plateau ones with their monitor).

        ``resumed``: the end of the epoch a run resumed in. A plateau scheduler's monitor logged before the
        interruption (by the validation that ran before the checkpoint) comes from the checkpoint, so the step is
        the uninterrupted run's; a monitor the checkpoint lacks skips this epoch's step, as Lightning skips plateau
        schedulers while restarting, instead of failing the resumed run."""
        trainer = self.trainer
        configs = trainer.lr_scheduler_configs
        if not configs:
            return
        idx = (batch_idx if interval == "step" else trainer.current_epoch) + 1
        for config in configs:
            if config.reduce_on_plateau != plateau or config.interval != interval or idx % config.frequency:
                continue
            if interval == "step" and trainer.progress.last_step_skipped:
                # GradScaler skipped the optimizer step (inf/nan gradients): the schedule must not advance either
                continue
            metric = None
            if config.reduce_on_plateau:
                metric = trainer.callback_metrics.get(config.monitor)
                if metric is None and resumed:
                    metric = (trainer.progress.resumed_monitors or {}).get(config.monitor)
                    if metric is None:
                        continue
                if metric is None:
                    if config.strict:
                        available = list(trainer.callback_metrics)
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. "
                            f"Available metrics are: {available}. Condition can be set using `monitor` key in lr "
                            "scheduler dict"
                        )
                    trainer.warnings.warn(
                        f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available but strict "
                        "is set to `False`. Skipping learning rate update.", category=RuntimeWarning,
                    )
                    continue
            self.hooks.call_module("lr_scheduler_step", config.scheduler, metric)


def _profiled_context(profile: Callable[[str], Any], action: str,
                      context: Optional[Callable[[], Any]]) -> Callable[[], contextlib.AbstractContextManager]:
    """The forward context with the step's profiler entry around it (a context, so it adds no frame)."""
    if context is None:
        return lambda: profile(action)

    def both() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(profile(action))
        stack.enter_context(context())
        return stack

    return both


def _batch_outputs(output: Any, loss: Optional[Tensor]) -> dict:
    """``outputs`` of ``on_train_batch_end``, as Lightning builds them: ``{"loss": ...}`` with the
    (accumulation-scaled) loss detached, then the other keys of a returned dict; ``{}`` for a skipped batch."""
    if loss is None:
        return {}
    if isinstance(output, dict):
        return {"loss": loss.detach(), **{k: v for k, v in output.items() if k != "loss"}}
    return {"loss": loss.detach()}


def _loss_from_output(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    if output is None:
        return None
    if isinstance(output, dict):
        loss = output.get("loss")
        if loss is None and "loss" not in output:
            raise MisconfigurationException(
                "`training_step` returned a dict without a 'loss' key. In automatic optimization the dict must "
                "hold the loss to backpropagate under 'loss', e.g. `return {'loss': loss, 'acc': acc}`."
            )
        return loss
    raise MisconfigurationException(
        f"`training_step` returned a {type(output).__name__}. In automatic optimization it must return the loss "
        "tensor, a dict with a 'loss' key, or None to skip the batch."
    )
