"""The training loop, top to bottom: epochs, batches, one optimisation step, validation when due.

Read ``run_fit`` first; everything it calls is below it in this file, except the optimisation step
(``step.py``: ``trainer.optimization.automatic_step()`` builds the epoch's ``step``) and the evaluation loop
(``eval_loop.py``). Hooks fire through ``trainer.hooks`` (callbacks, then the module); the counters live in
``trainer.progress``, the logged values in ``trainer.results``, the loaders in ``trainer.data``.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

from featherlight.trainer import eval_loop, pitfalls
from featherlight.trainer.data import _MaxSizeCycle
from featherlight.trainer.logging import ResultStore
from featherlight.trainer.progress import Phase
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.seed import _collect_rng_states, isolate_rng

_BATCH, _ENDED, _VALIDATING, _VALIDATED, _DONE = Phase.BATCH, Phase.ENDED, Phase.VALIDATING, Phase.VALIDATED, Phase.DONE


def run_fit(trainer: "Trainer") -> None:
    """Train until ``max_epochs``/``max_steps``/``max_time`` or ``trainer.should_stop``.

    ``progress.phase`` records where the loop is, so a checkpoint taken from any hook resumes exactly there
    (see :class:`~featherlight.trainer.progress.Phase`). A resumed run finishes the checkpointed batch or
    epoch from that phase, then carries on as if it had never stopped.
    """
    progress, hooks, data, results = trainer.progress, trainer.hooks, trainer.data, trainer.results
    optimization = trainer.optimization
    call, hook = hooks.call, hooks.hook
    module = trainer.lightning_module

    data.load_train()
    resume, progress.resume = progress.resume, None
    if resume is not None and resume.phase == Phase.EPOCH_END:
        # checkpointed during on_train_epoch_end: only what followed the hooks is left to do (no user hook runs);
        # done before on_train_start, which then sees the next epoch, as in Lightning
        store = results.train_store = ResultStore(training=True)
        results.switch(trainer, store)
        trainer.state.stage = RunningStage.TRAINING
        resume.restore_epoch(trainer, store)
        resume = None
        results.end_epoch(trainer)
        _end_epoch(trainer, store, resumed=True)
    if data.val_enabled() and validates_epoch(trainer):
        # loaded before training starts (for the progress bar) only if this epoch validates, as in Lightning
        data.ensure_val_loaders()
    # the first epoch's store is running from `on_train_start` on: what is logged there counts in that epoch
    first: Any = ResultStore(training=True)
    results.train_store = first
    results.switch(trainer, first)
    call("on_train_start")
    first_epoch = True
    while not _fit_done(trainer):
        if data.should_reload_train():
            data.load_train()
        _set_sampler_epoch(data.train_iterable, progress.epoch)
        store, first = first or ResultStore(training=True), None
        results.train_store = store
        results.switch(trainer, store)
        trainer.state.stage = RunningStage.TRAINING
        progress.phase = Phase.EPOCH_START
        call("on_train_epoch_start")
        start = 0
        if resume is not None:
            start = resume.restore_epoch(trainer, store)
            if resume.phase in (_ENDED, _VALIDATING, _VALIDATED):
                _finish_batch(trainer, store, resume.batch_idx, resume.is_last, resume.stepped, resume.phase)

        num_batches = trainer.num_training_batches
        # what every batch reads, resolved once per epoch: a hook nobody overrides is None and costs a test
        automatic = module.automatic_optimization
        step = optimization.automatic_step() if automatic else optimization.manual_step()
        profiling = hooks.profiling
        transfer = data.transfer if data.moves_batches else None
        batch_start, batch_end = hook("on_train_batch_start"), hook("on_train_batch_end")
        schedulers = automatic and bool(trainer.lr_scheduler_configs)
        epoch_profile = hooks.profile("run_training_epoch")
        epoch_profile.__enter__()
        batches = () if resume is not None and _epoch_done(trainer) else \
            _batches(trainer, data.train_iterable, num_batches, start, resume)
        if first_epoch:  # the seed's pitfalls: in-place edits of a batch the loader hands out again
            batches = pitfalls.watch_batches(trainer, batches)
        resumed, resume = resume is not None, None
        for batch_idx, batch, is_last in batches:
            progress.batch_idx, progress.phase = batch_idx, _BATCH
            if transfer is not None:
                batch = transfer(batch, 0)
            store.new_batch(batch)
            if batch is None:  # the collate function skipped this batch: no hooks, no step (Lightning's rule)
                outputs, stepped = _skipped_batch(trainer)
            elif batch_start is not None and batch_start(batch, batch_idx) == -1:
                break
            elif profiling:
                with hooks.profile("run_training_batch"):
                    outputs, stepped = step(batch, batch_idx, is_last)
            else:
                outputs, stepped = step(batch, batch_idx, is_last)
            if stepped and schedulers:
                optimization.step_schedulers("step", batch_idx)
                if is_last:
                    optimization.step_schedulers("epoch", batch_idx)
            progress.phase, progress.batch_stepped, progress.batch_is_last = _ENDED, stepped, is_last
            if batch_end is not None:
                batch_end(outputs, batch, batch_idx)
            _finish_batch(trainer, store, batch_idx, is_last, stepped)
            if (trainer.max_steps != -1 or trainer.should_stop) and _epoch_done(trainer):
                break
        epoch_profile.__exit__(None, None, None)
        if progress.phase is Phase.EPOCH_START and not resumed:  # not one batch came out of the loader
            _warn_no_batches(trainer)

        progress.phase = Phase.EPOCH_END
        results.end_epoch(trainer)
        call("on_train_epoch_end")
        if first_epoch:  # graphs kept on the module grow memory every step: said once, at the first epoch's end
            pitfalls.check_graph_kept_on_module(trainer)
            first_epoch = False
        _end_epoch(trainer, store, resumed)
    call("on_train_end")


def _warn_no_batches(trainer: "Trainer") -> None:
    """An epoch whose training loader yielded nothing (an empty ``IterableDataset``, a loader whose ``len`` promised
    batches it does not yield): said once per run, at the end of the first such epoch."""
    trainer.warnings.warn(
        "The training dataloader yielded no batches in this epoch, so nothing was trained (`global_step` did not "
        "move). If it iterates an `IterableDataset`, make sure its `__iter__` yields samples (with `num_workers > 0`, "
        "that each worker's share is not empty); a loader of known length that yields nothing is empty too. Check "
        "the dataset, or pass `limit_train_batches=0` to skip training on purpose."
    )


def _skipped_batch(trainer: "Trainer") -> tuple[None, bool]:
    """A ``None`` batch from the training dataloader: ``on_train_batch_end`` sees ``outputs=None``, nothing steps."""
    trainer.warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning...")
    return None, False


def run_sanity_check(trainer: "Trainer") -> None:
    """A few validation batches before training (``num_sanity_val_steps``), whose values are then forgotten."""
    data = trainer.data
    if trainer.num_sanity_val_steps == 0 or not data.val_enabled():
        return
    with isolate_rng():  # the sanity check must not change what the training run draws
        trainer.state.stage = RunningStage.SANITY_CHECKING
        trainer.hooks.call("on_sanity_check_start")
        if data.ensure_val_loaders(counts_as_reload=validates_epoch(trainer)):
            steps = trainer.num_sanity_val_steps
            limits = [n if steps == -1 else min(n, steps) for n in data.val_limits]
            trainer.num_sanity_val_batches = limits
            eval_loop.run_evaluation(trainer, RunningStage.SANITY_CHECKING, data.val_loaders, limits)
        trainer.hooks.call("on_sanity_check_end")
        # sanity-check values must not leak into the real run's metrics
        trainer.results.reset()
        trainer.state.stage = None


def _end_epoch(trainer: "Trainer", store: ResultStore, resumed: bool = False) -> None:
    """After ``on_train_epoch_end``: log the epoch's values, step plateau schedulers, count the epoch
    (``resumed``: the epoch a run resumed in)."""
    progress = trainer.progress
    trainer.results.log_train_epoch(trainer)
    if trainer.lightning_module.automatic_optimization and progress.batch_is_last:
        # only after an epoch that ran all its batches (not one `max_steps` or a -1 from on_train_batch_start cut
        # short), as in Lightning
        trainer.optimization.step_schedulers("epoch", None, plateau=True, resumed=resumed)
    progress.epoch += 1
    # a checkpoint taken from here on (e.g. after fit) resumes at the start of the next epoch
    progress.phase, progress.batch_idx = Phase.EPOCH_START, 0
    store.reset_metrics()


def _finish_batch(trainer: "Trainer", store: ResultStore, batch_idx: int, is_last: bool, stepped: bool,
                  from_phase: Phase = _ENDED) -> None:
    """What follows a batch's ``on_train_batch_end``: logging, validation when due, the counters.

    ``from_phase`` lets a resumed run pick up where its checkpoint was taken (``ENDED``, ``VALIDATING`` or
    ``VALIDATED``); a normal batch starts at ``ENDED``.
    """
    progress = trainer.progress
    if from_phase == _ENDED:
        progress.total_batch_idx += 1
        if stepped and trainer.loggers and ((progress.batches_that_stepped + 1) % trainer.log_every_n_steps == 0
                                            or trainer.should_stop or trainer.fast_dev_run):
            trainer.results.log_train_step(trainer)
    if from_phase == _VALIDATING or (
            from_phase == _ENDED and trainer.data.val_enabled() and _should_validate(trainer, batch_idx, is_last)):
        progress.phase = _VALIDATING
        _run_validation(trainer)
        trainer.results.switch(trainer, store)
        trainer.state.stage = RunningStage.TRAINING
    progress.phase = _VALIDATED
    if stepped:
        if trainer.lr_scheduler_configs and trainer.lightning_module.automatic_optimization:
            trainer.optimization.step_schedulers("step", batch_idx, plateau=True)
        progress.batches_that_stepped += 1
    progress.phase = _DONE
    interrupts = trainer.interrupts
    every = interrupts.every
    if (interrupts.received is not None and not every) or (every and progress.total_batch_idx % every == 0):
        interrupts.check(trainer)


def _run_validation(trainer: "Trainer") -> None:
    """A validation run inside fit; loaders reloaded first when ``reload_dataloaders_every_n_epochs`` is due."""
    data = trainer.data
    reload = data.reload_val if data.val_reload_due() else None
    if reload is None and not data.ensure_val_loaders():
        return
    trainer.progress.val_start_rng = _collect_rng_states()  # an interrupted validation reruns from here
    eval_loop.run_evaluation(trainer, RunningStage.VALIDATING, data.val_loaders, data.val_limits, reload)


def _batches(trainer: "Trainer", loader: Any, num_batches: float, start: int = 0, resume: Any = None) -> Iterator:
    """``(batch_idx, batch, is_last)`` from ``start``; looks one batch ahead only when the length is unknown.
    A resumed epoch's iterator comes from ``resume``, positioned without loading skipped batches."""
    if num_batches == 0 or start >= num_batches:
        return iter(())
    if resume is not None and start:
        fetch = resume.iterator(trainer, loader, start)
    else:
        # the RNG states the epoch's data order is drawn from: a mid-epoch resume draws it again from them
        trainer.progress.epoch_start_rng = _collect_rng_states()
        fetch = trainer.hooks.profiled_iter(loader, "train")
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


def validates_epoch(trainer: "Trainer") -> bool:
    """Whether the current epoch validates at all (``check_val_every_n_epoch``)."""
    every = trainer.check_val_every_n_epoch
    return every is None or (trainer.current_epoch + 1) % every == 0


def _should_validate(trainer: "Trainer", batch_idx: int, is_last: bool) -> bool:
    """Lightning's rule: every ``val_check_interval`` batches (or on the last batch), in due epochs."""
    every = trainer.check_val_every_n_epoch
    if every is not None and (trainer.current_epoch + 1) % every != 0:
        return False
    check_batch = trainer.val_check_batch
    if trainer.should_stop and can_stop_early(trainer):
        return True
    if math.isinf(check_batch):
        return is_last
    iteration = trainer.progress.total_batch_idx - 1 if every is None else batch_idx
    if isinstance(trainer.limit_train_batches, int) and math.isinf(trainer.data.train_len):
        return (batch_idx + 1) % trainer.limit_train_batches == 0
    return (iteration + 1) % check_batch == 0


def can_stop_early(trainer: "Trainer") -> bool:
    """Whether ``min_epochs``/``min_steps`` allow a requested stop (``should_stop``) to take effect now."""
    progress = trainer.progress
    met_epochs = progress.epoch >= trainer.min_epochs if trainer.min_epochs else True
    met_steps = progress.global_step >= trainer.min_steps if trainer.min_steps else True
    return met_epochs and met_steps


def _stop_allowed(trainer: "Trainer") -> bool:
    """A requested stop (``should_stop``) takes effect unless ``min_epochs``/``min_steps`` are not met yet; then
    training continues, said once per run (Lightning's INFO line)."""
    if can_stop_early(trainer):
        return True
    trainer.warnings.info(
        f"Trainer was signaled to stop but the required `min_epochs={trainer.min_epochs!r}` or "
        f"`min_steps={trainer.min_steps!r}` has not been met. Training will continue..."
    )
    return False


def _epoch_done(trainer: "Trainer") -> bool:
    if trainer.max_steps != -1 and trainer.progress.global_step >= trainer.max_steps:
        return True
    return trainer.should_stop and _stop_allowed(trainer)


def _fit_done(trainer: "Trainer") -> bool:
    progress = trainer.progress
    if trainer.num_training_batches == 0:
        return True
    if trainer.max_steps != -1 and progress.global_step >= trainer.max_steps:
        return True
    if trainer.max_epochs is not None and trainer.max_epochs != -1 and progress.epoch >= trainer.max_epochs:
        return True
    return trainer.should_stop and _stop_allowed(trainer)


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on samplers that have it (DistributedSampler), so each epoch shuffles differently."""
    loaders = loader.flattened if isinstance(loader, _MaxSizeCycle) else [loader]
    for dl in loaders:
        for obj in (getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
