"""The training loop, top to bottom: epochs, batches, one optimisation step, validation when due.

Read ``run_fit`` first; everything it calls is below it in this file, except the evaluation loop
(``eval_loop.py``). Hooks fire through ``trainer._dispatch.call`` (callbacks, then the module).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from featherlight.trainer.logging import _ResultStore
from featherlight.trainer.states import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer


def run_fit(trainer: "Trainer") -> None:
    """Train until ``max_epochs``/``max_steps``/``max_time`` or ``trainer.should_stop``.

    ``loop.phase`` records where the loop is, so a checkpoint taken from any hook resumes exactly
    there: "epoch_start", "batch" (inside a batch's optimisation), "ended" (the batch's step is done),
    "validating", "validated", and "epoch_end". A resumed run finishes the checkpointed batch or epoch
    from that phase, then carries on as if it had never stopped.
    """
    loop = trainer._loop
    call = trainer._dispatch.call
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
        automatic = module.automatic_optimization
        step = trainer._profiled(_automatic_step if module.automatic_optimization else _manual_step,
                                 "run_training_batch")
        epoch_profile = trainer._profile("run_training_epoch")
        epoch_profile.__enter__()
        batches = () if resume is not None and _epoch_done(trainer) else \
            _batches(trainer, trainer.train_dataloader, num_batches, start, resume)
        resume = None
        for batch_idx, batch, is_last in batches:
            loop.batch_idx, loop.phase = batch_idx, "batch"
            batch = trainer._transfer_batch(batch, 0)
            store.new_batch(batch)
            if call("on_train_batch_start", batch, batch_idx) == -1:
                break
            outputs = step(trainer, batch, batch_idx, is_last)
            stepped = not automatic or _window_end(trainer, batch_idx, is_last)
            if stepped and automatic and trainer.lr_scheduler_configs:
                _step_schedulers(trainer, "step", batch_idx)
                if is_last:
                    _step_schedulers(trainer, "epoch", batch_idx)
            loop.phase, loop.batch_stepped, loop.batch_is_last = "ended", stepped, is_last
            call("on_train_batch_end", outputs, batch, batch_idx)
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
        if stepped and trainer.loggers:
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


def _batches(trainer: "Trainer", loader: Any, num_batches: float, start: int = 0, resume: Any = None):
    """Yield ``(batch_idx, batch, is_last)`` from ``start``; looks one batch ahead only when the length is
    unknown. A resumed epoch's iterator comes from ``resume``, positioned without loading skipped batches."""
    if num_batches == 0 or start >= num_batches:
        return
    if resume is not None and start:
        fetch = resume.iterator(trainer, loader, start)
    else:
        from featherlight.utilities.seed import _collect_rng_states

        # the RNG states the epoch's data order is drawn from: a mid-epoch resume draws it again from them
        trainer._loop.epoch_start_rng = _collect_rng_states()
        fetch = trainer._profiled_iter(loader, "train")
    if not math.isinf(num_batches):
        last = int(num_batches) - 1
        for batch_idx in range(start, int(num_batches)):
            try:
                batch = next(fetch)
            except StopIteration:
                return
            yield batch_idx, batch, batch_idx == last
        return
    # unknown length (IterableDataset): fetch one ahead to know which batch is the last
    try:
        batch = next(fetch)
    except StopIteration:
        return
    batch_idx = start
    while True:
        try:
            nxt = next(fetch)
        except StopIteration:
            yield batch_idx, batch, True
            return
        yield batch_idx, batch, False
        batch, batch_idx = nxt, batch_idx + 1


def _window_end(trainer: "Trainer", batch_idx: int, is_last: bool) -> bool:
    """True on the batch that closes an accumulation window (the epoch's last batch always does)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or is_last


def _automatic_step(trainer: "Trainer", batch: Any, batch_idx: int, is_last: bool) -> dict:
    """One batch of automatic optimisation: the closure, and ``optimizer_step`` when a window ends."""
    module = trainer.lightning_module
    training_step = trainer._training_step
    forward_context = trainer.precision_plugin.forward_context
    call = trainer._dispatch.call
    optimizer = trainer.strategy._lightning_optimizers[0]
    raw_optimizer = optimizer._optimizer
    accumulate = trainer.accumulate_grad_batches
    zero_grad_first = batch_idx % accumulate == 0
    wants_outputs = trainer._dispatch._plan["on_train_batch_end"] is not None
    result: list = []

    def closure() -> Optional[Tensor]:
        trainer._current_fx = "training_step"
        with forward_context():
            output = training_step(batch, batch_idx)
        trainer._current_fx = None
        loss = output if type(output) is Tensor else _loss_from_output(output)
        # `outputs` for on_train_batch_end, built only if a hook will read it
        result.append(output if not wants_outputs or isinstance(output, dict) else
                      ({"loss": loss.detach()} if loss is not None else {}))
        if zero_grad_first:
            call("on_before_zero_grad", raw_optimizer)
            trainer._current_fx = "optimizer_zero_grad"
            module.optimizer_zero_grad(trainer._loop.epoch, batch_idx, raw_optimizer)
            trainer._current_fx = None
        if loss is None:
            trainer._warnings.warn(
                "`training_step` returned `None`. If this was on purpose, ignore this warning: the batch is skipped."
            )
            return None
        if accumulate > 1:
            loss = loss / accumulate
            if not wants_outputs:
                pass
            elif isinstance(output, dict):
                result[-1] = {**output, "loss": loss.detach()}
            else:
                result[-1] = {"loss": loss.detach()}
        trainer._backward(loss, raw_optimizer)
        return loss

    if (batch_idx + 1) % accumulate == 0 or is_last:  # the window closes: step
        if trainer._plain_step:
            # nothing overrides the step (module hook, precision, optimizer needing the closure): the same
            # work as below without its indirections
            closure()
            call("on_before_optimizer_step", raw_optimizer)
            if trainer._clip_active:
                trainer._clip_gradients(raw_optimizer)
            raw_optimizer.step()
            trainer._loop.global_step += 1
            return result[-1]
        trainer._current_fx = "optimizer_step"
        module.optimizer_step(trainer.current_epoch, batch_idx, optimizer, closure)
        trainer._current_fx = None
        if not result:
            raise MisconfigurationException(
                "The closure wasn't executed. `optimizer_step` must call `optimizer.step(closure=optimizer_closure)` "
                "(or `optimizer_closure()`): it runs training_step and backward."
            )
    else:
        closure()
    return result[-1]


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


def _manual_step(trainer: "Trainer", batch: Any, batch_idx: int, is_last: bool) -> dict:
    """One batch of manual optimisation: the user's ``training_step`` steps optimizers itself."""
    precision = trainer.precision_plugin
    trainer._current_fx = "training_step"
    with precision.forward_context():
        output = trainer._training_step(batch, batch_idx)
    trainer._current_fx = None
    if output is None:
        return {}
    if isinstance(output, Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict):
        return {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in output.items()}
    raise MisconfigurationException(
        f"In manual optimization, `training_step` must return a Tensor, a dict or None; it returned "
        f"{type(output).__name__}."
    )


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
