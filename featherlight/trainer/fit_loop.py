"""The training loop, top to bottom: epochs, batches, one optimisation step, validation when due.

Read ``run_fit`` first; everything it calls is below it in this file, except the evaluation loop
(``eval_loop.py``). Hooks fire through ``trainer._dispatch.call`` (callbacks, then the module).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from featherlight.trainer.logging import _ResultStore
from featherlight.trainer.states import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

_NOT_RUN = object()  # marks a closure the user's optimizer_step never called


def run_fit(trainer: "Trainer") -> None:
    """Train until ``max_epochs``/``max_steps``/``max_time`` or ``trainer.should_stop``.

    ``loop.phase`` records where the loop is, so a checkpoint taken from any hook resumes exactly
    there: "epoch_start", "batch" (inside a batch's optimisation), "ended" (the batch's step is done),
    "validating", "validated", and "epoch_end". A resumed run finishes the checkpointed batch or epoch
    from that phase, then carries on as if it had never stopped.
    """
    loop = trainer._loop
    call, hook = trainer._dispatch.call, trainer._dispatch.hook
    module = trainer.lightning_module

    trainer._load_train_dataloader()
    if trainer._val_enabled():
        trainer._ensure_val_loaders()
    call("on_train_start")
    resume, trainer._resume = trainer._resume, None
    while not _fit_done(trainer):
        if trainer._should_reload_train_dl():
            trainer._load_train_dataloader()
        _set_sampler_epoch(trainer.train_dataloader, loop.epoch)
        store = trainer._train_store = _ResultStore(training=True)
        trainer._log.switch(trainer, store)
        trainer.state.stage = RunningStage.TRAINING
        if resume is not None and resume.phase == "epoch_end":
            # checkpointed during on_train_epoch_end: only what followed the hooks is left to do
            resume.restore_epoch(trainer, store)
            resume = None
            trainer._log.end_epoch(trainer)
            _end_epoch(trainer, store)
            continue
        loop.phase = "epoch_start"
        call("on_train_epoch_start")
        start = 0
        if resume is not None:
            start = resume.restore_epoch(trainer, store)
            if resume.phase in ("ended", "validating", "validated"):
                _finish_batch(trainer, store, resume.batch_idx, resume.is_last, resume.stepped, resume.phase)

        num_batches = trainer.num_training_batches
        # what every batch reads, resolved once per epoch: a hook nobody overrides is None and costs a test
        automatic = module.automatic_optimization
        step = trainer._profiled(_automatic_step(trainer) if automatic else _manual_step(trainer),
                                 "run_training_batch")
        transfer = trainer._transfer_batch if trainer._moves_batches else None
        batch_start, batch_end = hook("on_train_batch_start"), hook("on_train_batch_end")
        schedulers = automatic and bool(trainer.lr_scheduler_configs)
        epoch_profile = trainer._profile("run_training_epoch")
        epoch_profile.__enter__()
        batches = () if resume is not None and _epoch_done(trainer) else \
            _batches(trainer, trainer.train_dataloader, num_batches, start, resume)
        resume = None
        for batch_idx, batch, is_last in batches:
            loop.batch_idx, loop.phase = batch_idx, "batch"
            if transfer is not None:
                batch = transfer(batch, 0)
            store.new_batch(batch)
            if batch_start is not None and batch_start(batch, batch_idx) == -1:
                break
            outputs, stepped = step(batch, batch_idx, is_last)
            if stepped and schedulers:
                _step_schedulers(trainer, "step", batch_idx)
                if is_last:
                    _step_schedulers(trainer, "epoch", batch_idx)
            loop.phase, loop.batch_stepped, loop.batch_is_last = "ended", stepped, is_last
            if batch_end is not None:
                batch_end(outputs, batch, batch_idx)
            _finish_batch(trainer, store, batch_idx, is_last, stepped)
            if (trainer.max_steps != -1 or trainer.should_stop) and _epoch_done(trainer):
                break
        epoch_profile.__exit__(None, None, None)

        loop.phase = "epoch_end"
        trainer._log.end_epoch(trainer)
        call("on_train_epoch_end")
        _end_epoch(trainer, store)
    call("on_train_end")


def _end_epoch(trainer: "Trainer", store: _ResultStore) -> None:
    """After ``on_train_epoch_end``: log the epoch's values, step plateau schedulers, count the epoch."""
    loop = trainer._loop
    trainer._log_train_epoch()
    if trainer.lightning_module.automatic_optimization:
        _step_schedulers(trainer, "epoch", None, plateau=True)
    loop.epoch += 1
    # a checkpoint taken from here on (e.g. after fit) resumes at the start of the next epoch
    loop.phase, loop.batch_idx = "epoch_start", 0
    store.reset_metrics()


def _finish_batch(trainer: "Trainer", store: _ResultStore, batch_idx: int, is_last: bool, stepped: bool,
                  from_phase: str = "ended") -> None:
    """What follows a batch's ``on_train_batch_end``: logging, validation when due, the counters.

    ``from_phase`` lets a resumed run pick up where its checkpoint was taken ("ended", "validating" or
    "validated"); a normal batch starts at "ended".
    """
    loop = trainer._loop
    if from_phase == "ended":
        loop.total_batch_idx += 1
        if stepped and trainer.loggers and ((loop.batches_that_stepped + 1) % trainer.log_every_n_steps == 0
                                            or trainer.should_stop or trainer.fast_dev_run):
            trainer._log_train_step()
    if from_phase == "validating" or (
            from_phase == "ended" and trainer._val_on and _should_validate(trainer, batch_idx, is_last)):
        loop.phase = "validating"
        trainer._run_validation_in_fit()
        trainer._log.switch(trainer, store)
        trainer.state.stage = RunningStage.TRAINING
    loop.phase = "validated"
    if stepped:
        if trainer.lr_scheduler_configs and trainer.lightning_module.automatic_optimization:
            _step_schedulers(trainer, "step", batch_idx, plateau=True)
        loop.batches_that_stepped += 1
    loop.phase = "done"
    every = trainer._signal_every
    if (trainer._signal_received is not None and not every) or (every and loop.total_batch_idx % every == 0):
        trainer._checkpoint_and_exit()


def _batches(trainer: "Trainer", loader: Any, num_batches: float, start: int = 0, resume: Any = None) -> Iterator:
    """``(batch_idx, batch, is_last)`` from ``start``; looks one batch ahead only when the length is unknown.
    A resumed epoch's iterator comes from ``resume``, positioned without loading skipped batches."""
    if num_batches == 0 or start >= num_batches:
        return iter(())
    if resume is not None and start:
        fetch = resume.iterator(trainer, loader, start)
    else:
        from featherlight.utilities.seed import _collect_rng_states

        # the RNG states the epoch's data order is drawn from: a mid-epoch resume draws it again from them
        trainer._loop.epoch_start_rng = _collect_rng_states()
        fetch = trainer._profiled_iter(loader, "train")
    if math.isinf(num_batches):
        return _look_ahead(fetch, start)
    n = int(num_batches)
    # no generator frame per batch: the index range comes first, so zip stops at the limit without fetching a
    # batch past it (or earlier, when the loader runs out); the third column marks the last batch
    return zip(range(start, n), fetch, itertools.chain(itertools.repeat(False, n - 1 - start), (True,)))


def _look_ahead(fetch: Iterator, batch_idx: int) -> Iterator:
    """For loaders of unknown length (IterableDataset): fetch one batch ahead to know which one is the last."""
    try:
        batch = next(fetch)
    except StopIteration:
        return
    while True:
        try:
            nxt = next(fetch)
        except StopIteration:
            yield batch_idx, batch, True
            return
        yield batch_idx, batch, False
        batch, batch_idx = nxt, batch_idx + 1


def _automatic_step(trainer: "Trainer") -> Callable[[Any, int, bool], tuple[Any, bool]]:
    """This epoch's step of automatic optimisation: ``step(batch, batch_idx, is_last) -> (outputs, stepped)``.

    Every batch runs ``forward_backward`` (training_step, zero_grad at the start of an accumulation window,
    backward); the batch that closes a window also steps the optimizer, through ``optimizer_step`` and a
    closure as in Lightning. When nothing customises that step (``Trainer._is_plain_step``: no
    ``optimizer_step`` override, full precision, an optimizer that calls its closure once, no profiler) the
    optimizer is stepped directly: the same work without the indirections. Everything the step reads is
    resolved here, once per epoch, because this is the hot path.
    """
    from featherlight.core.module import LightningModule
    from featherlight.trainer.dispatch import _needs_call

    module = trainer.lightning_module
    loop = trainer._loop
    hook = trainer._dispatch.hook
    training_step = trainer._training_step
    forward_context = trainer._forward_context
    # no hook, loss scaling, strategy or `backward` override touches backward: call `loss.backward()` directly
    backward = trainer._backward if trainer._customises_backward() else None
    optimizer = trainer.strategy._lightning_optimizers[0]
    raw_optimizer = optimizer._optimizer
    accumulate = trainer.accumulate_grad_batches
    plain, clip = trainer._plain_step, trainer._clip_active
    before_zero_grad, before_optimizer_step = hook("on_before_zero_grad"), hook("on_before_optimizer_step")
    # the module's optimizer_zero_grad when overridden; else what Lightning's default does, called directly
    zero_grad = module.optimizer_zero_grad if _needs_call(module, "optimizer_zero_grad", LightningModule) else None
    # `outputs` for on_train_batch_end are built only if a hook may read them (not for the progress bar or
    # checkpointing, which only count batches)
    wants_outputs = trainer._dispatch.reads_outputs("on_train_batch_end")

    last: list = [None, None]  # (output, loss) of the latest forward_backward, read by `step` right after

    def forward_backward(batch: Any, batch_idx: int) -> Optional[Tensor]:
        """What the optimizer's closure runs: training_step, zero_grad at a window's start, backward. Returns the
        loss it backpropagated (None for a skipped batch); leaves training_step's output and the loss in ``last``."""
        trainer._current_fx = "training_step"
        if forward_context is None:
            output = training_step(batch, batch_idx)
        else:
            with forward_context():
                output = training_step(batch, batch_idx)
        trainer._current_fx = None
        loss = output if type(output) is Tensor else _loss_from_output(output)
        if batch_idx % accumulate == 0:
            if before_zero_grad is not None:
                before_zero_grad(raw_optimizer)
            if zero_grad is None:
                raw_optimizer.zero_grad()
            else:
                trainer._current_fx = "optimizer_zero_grad"
                zero_grad(loop.epoch, batch_idx, raw_optimizer)
                trainer._current_fx = None
        if loss is None:
            trainer._warnings.warn(
                "`training_step` returned `None`. If this was on purpose, ignore this warning: the batch is skipped."
            )
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
            forward_backward(batch, batch_idx)
            stepped = False
        elif plain:
            forward_backward(batch, batch_idx)
            if before_optimizer_step is not None:
                before_optimizer_step(raw_optimizer)
            if clip:
                trainer._clip_gradients(raw_optimizer)
            raw_optimizer.step()
            loop.global_step += 1
            stepped = True
        else:
            last[0] = _NOT_RUN
            trainer._current_fx = "optimizer_step"
            # the closure is forward_backward bound to this batch: no frame of ours between the optimizer and it
            module.optimizer_step(trainer.current_epoch, batch_idx, optimizer,
                                  functools.partial(forward_backward, batch, batch_idx))
            trainer._current_fx = None
            if last[0] is _NOT_RUN:
                raise MisconfigurationException(
                    "The closure wasn't executed. `optimizer_step` must call `optimizer.step(closure=optimizer_closure)` "
                    "(or `optimizer_closure()`): it runs training_step and backward."
                )
            stepped = True
        output, loss = last
        last[0] = last[1] = None  # the loss keeps its autograd nodes alive: don't hold it past the step
        return (_batch_outputs(output, loss) if wants_outputs else output), stepped

    return step


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
        if loss is None:
            raise MisconfigurationException(
                "`training_step` returned a dict without a 'loss' key. In automatic optimization the dict must "
                "hold the loss to backpropagate under 'loss', e.g. `return {'loss': loss, 'acc': acc}`."
            )
        return loss
    raise MisconfigurationException(
        f"`training_step` returned a {type(output).__name__}. In automatic optimization it must return the loss "
        "tensor, a dict with a 'loss' key, or None to skip the batch."
    )


def _manual_step(trainer: "Trainer") -> Callable[[Any, int, bool], tuple[Any, bool]]:
    """This epoch's step of manual optimisation: the user's ``training_step`` steps optimizers itself."""
    training_step = trainer._training_step
    forward_context = trainer._forward_context

    def step(batch: Any, batch_idx: int, is_last: bool) -> tuple[Any, bool]:
        trainer._current_fx = "training_step"
        if forward_context is None:
            output = training_step(batch, batch_idx)
        else:
            with forward_context():
                output = training_step(batch, batch_idx)
        trainer._current_fx = None
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


def _step_schedulers(trainer: "Trainer", interval: str, batch_idx: Optional[int], plateau: bool = False) -> None:
    """Step the schedulers of ``interval`` whose frequency is due (plateau ones with their monitor)."""
    configs = trainer.lr_scheduler_configs
    if not configs:
        return
    idx = (batch_idx if interval == "step" else trainer.current_epoch) + 1
    for config in configs:
        if config.reduce_on_plateau != plateau or config.interval != interval or idx % config.frequency:
            continue
        if interval == "step" and trainer._last_step_skipped:
            # GradScaler skipped the optimizer step (inf/nan gradients): the schedule must not advance either
            continue
        metric = None
        if config.reduce_on_plateau:
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                available = sorted(k for k in trainer.callback_metrics)
                message = (
                    f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. Available "
                    f"metrics are: {available}. Condition can be set using `monitor` key in lr scheduler dict"
                )
                if config.strict:
                    raise MisconfigurationException(message)
                trainer._warnings.warn(message + " (skipping this scheduler step because `strict=False`)")
                continue
        trainer._call_module("lr_scheduler_step", config.scheduler, metric)


def _should_validate(trainer: "Trainer", batch_idx: int, is_last: bool) -> bool:
    """Lightning's rule: every ``val_check_interval`` batches (or on the last batch), in due epochs."""
    if not trainer._val_enabled():
        return False
    every = trainer.check_val_every_n_epoch
    if every is not None and (trainer.current_epoch + 1) % every != 0:
        return False
    check_batch = trainer.val_check_batch
    if trainer.should_stop and trainer._can_stop_early():
        return True
    if math.isinf(check_batch):
        return is_last
    iteration = trainer._loop.total_batch_idx - 1 if every is None else batch_idx
    if isinstance(trainer.limit_train_batches, int) and math.isinf(trainer._train_len):
        return (batch_idx + 1) % trainer.limit_train_batches == 0
    return (iteration + 1) % check_batch == 0


def _epoch_done(trainer: "Trainer") -> bool:
    loop = trainer._loop
    if trainer.max_steps != -1 and loop.global_step >= trainer.max_steps:
        return True
    return trainer.should_stop and trainer._can_stop_early()


def _fit_done(trainer: "Trainer") -> bool:
    loop = trainer._loop
    if trainer.num_training_batches == 0:
        return True
    if trainer.max_steps != -1 and loop.global_step >= trainer.max_steps:
        return True
    if trainer.max_epochs is not None and trainer.max_epochs != -1 and loop.epoch >= trainer.max_epochs:
        return True
    if trainer.should_stop and trainer._can_stop_early():
        return True
    return False


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on samplers that have it (DistributedSampler), so each epoch shuffles differently."""
    loaders = loader._items if hasattr(loader, "_items") else [loader]
    for dl in loaders:
        for obj in (getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
