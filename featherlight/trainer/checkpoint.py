"""Checkpoints: what goes in, how it is written (atomically) and read (never executing code).

A checkpoint is a dict of parts that each save and load themselves: the module's weights, the
optimizers, schedulers, precision (GradScaler), callbacks, datamodule, loop counters and RNG
states. The top-level keys are Lightning's, so checkpoints move between the two frameworks.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

from featherlight.core.mixins.hparams_mixin import checkpoint_hparams, init_hparam_names, saved_hparams
from featherlight.core.saving import (
    DM_HPARAMS_INIT_KEY,
    DM_HPARAMS_LEFT_OUT_KEY,
    DM_HPARAMS_TORCH_MODULES_KEY,
    HPARAMS_INIT_KEY,
    HPARAMS_LEFT_OUT_KEY,
    HPARAMS_TORCH_MODULES_KEY,
    plain_hparams,
    torch_module_records,
)
from featherlight.io.async_checkpoint_io import PendingCheckpoint
from featherlight.io.load import checkpoint_mtime, is_checkpoint_path, load_checkpoint
from featherlight.io.paths import is_remote
from featherlight.io.state import load_module_state, strip_compile_prefix
from featherlight.trainer.interrupt import _checkpoint_path
from featherlight.trainer.progress import LoopState
from featherlight.trainer.resume import ResumePoint, _position_state
from featherlight.utilities.exceptions import CheckpointError, MisconfigurationException, WeightsOnlyCheckpointError
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn
from featherlight.utilities.seed import (
    _collect_rng_states,
    _set_rng_states,
    rng_states_from_tensors,
    rng_states_to_tensors,
)

# Lightning reads this key to decide which migrations to run; our layout matches its 2.x format.
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
LIGHTNING_COMPAT_VERSION = "2.5.0"
VERSION_KEY = "featherlight_version"
LOOP_KEY = "featherlight_loop"
RNG_KEY = "featherlight_rng_states"
# the class of each optimizer ("torch.optim.adam.Adam"), checked against `configure_optimizers` on resume
OPTIMIZER_TYPES_KEY = "featherlight_optimizer_types"


def _dump_checkpoint(trainer: "Trainer", weights_only: bool = False) -> dict[str, Any]:
    """Build the checkpoint dict of the trainer's current state (hooks included)."""
    from featherlight.__about__ import __featherlight_version__

    module = trainer.lightning_module
    loop = trainer.progress
    checkpoint: dict[str, Any] = {
        "epoch": loop.epoch,
        "global_step": loop.global_step,
        LIGHTNING_VERSION_KEY: LIGHTNING_COMPAT_VERSION,
        VERSION_KEY: __featherlight_version__,
        "state_dict": strip_compile_prefix(trainer.strategy.model_state_dict()),
        "loops": _lightning_loops(trainer),
        LOOP_KEY: {**loop.counters(), **_position_state(trainer)},
    }
    if not weights_only:
        checkpoint["callbacks"] = {}
        for cb in trainer.callbacks:
            state = cb.state_dict()
            if state:
                checkpoint["callbacks"][cb.state_key] = state
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint[OPTIMIZER_TYPES_KEY] = [_class_name(opt) for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        precision = trainer.precision_plugin
        prec_state = precision.state_dict()
        if prec_state:
            checkpoint[type(precision).__qualname__] = prec_state
        checkpoint[RNG_KEY] = rng_states_to_tensors(_collect_rng_states())
    saved = saved_hparams(module)
    if saved is not None:
        hparams, left_out = checkpoint_hparams(saved[1])
        checkpoint["hparams_name"], checkpoint["hyper_parameters"] = saved[0], plain_hparams(hparams)
        if left_out:  # nn.Module hyperparameters: `load_from_checkpoint` asks for them by name
            checkpoint[HPARAMS_LEFT_OUT_KEY] = left_out
            records = torch_module_records(saved[1], left_out)
            if records:  # ... except torch's own stateless layers, which it rebuilds
                checkpoint[HPARAMS_TORCH_MODULES_KEY] = records
        checkpoint[HPARAMS_INIT_KEY] = init_hparam_names(module)
    dm = trainer.datamodule
    if dm is not None:
        saved = saved_hparams(dm)
        if saved is not None and saved[1]:
            hparams, left_out = checkpoint_hparams(saved[1])
            checkpoint["datamodule_hparams_name"] = saved[0]
            checkpoint["datamodule_hyper_parameters"] = plain_hparams(hparams)
            if left_out:
                checkpoint[DM_HPARAMS_LEFT_OUT_KEY] = left_out
                records = torch_module_records(saved[1], left_out)
                if records:
                    checkpoint[DM_HPARAMS_TORCH_MODULES_KEY] = records
            checkpoint[DM_HPARAMS_INIT_KEY] = init_hparam_names(dm)
        dm_state = trainer.hooks.call_datamodule("state_dict")
        if dm_state:
            checkpoint[type(dm).__qualname__] = dm_state
    if not weights_only:
        trainer.hooks.call_callbacks("on_save_checkpoint", checkpoint)
    else:
        # callbacks that decide what the model's weights are (weight averaging) edit weights-only files too
        for cb in trainer.callbacks:
            if getattr(cb, "edits_weights_only_checkpoints", False) is True:
                cb.on_save_checkpoint(trainer, module, checkpoint)
    # a datamodule saves through `state_dict()` only: Lightning 2.x no longer calls its `on_save_checkpoint`
    trainer.hooks.call_module("on_save_checkpoint", checkpoint)
    return checkpoint


def _progress(ready: int, started: Optional[int] = None, processed: Optional[int] = None,
              completed: Optional[int] = None) -> dict[str, int]:
    """One tracker in Lightning's progress format (the keys depend on which counters it has)."""
    out = {"ready": int(ready), "completed": int(ready if completed is None else completed)}
    if started is not None:
        out["started"] = int(started)
    if processed is not None:
        out["processed"] = int(processed)
    return out


def _lightning_loops(trainer: "Trainer") -> dict[str, Any]:
    """The ``loops`` entry in Lightning's format, built from our loop counters.

    featherlight resumes from its own ``featherlight_loop`` entry; this one lets
    ``lightning.pytorch.Trainer.fit(ckpt_path=...)`` resume a featherlight checkpoint at the same epoch,
    batch and global step. The epoch, batch, optimizer-step and scheduler progress and
    ``_batches_that_stepped`` are what Lightning writes at the same hook (tests compare them). The
    validation progress is approximate: we do not count validation batches, and Lightning reads it only
    to resume inside a validation (``phase == "validating"``, written as such).
    """
    loop = trainer.progress
    epoch, global_step, stepped_batches = int(loop.epoch), int(loop.global_step), int(loop.batches_that_stepped)
    total, batch_idx, phase = int(loop.total_batch_idx), int(loop.batch_idx), loop.phase
    module = trainer.lightning_module
    automatic = module is None or module.automatic_optimization
    fitting = trainer.state.fn == "fit"
    mid_epoch = fitting and phase in ("batch", "ended", "validating", "validated", "done", "epoch_end")

    val_progress = {"total": _progress(0, 0, 0), "current": _progress(0, 0, 0), "is_last_batch": False}
    counted_epoch = epoch  # the epoch the per-epoch ("current") counters describe
    if not mid_epoch:
        epoch_progress = {"total": _progress(epoch, epoch, epoch), "current": _progress(epoch, epoch, epoch)}
        # Lightning keeps the finished epoch's per-epoch counts until the next epoch starts; we know them
        # when that epoch ran to its last batch
        n_batches = trainer.num_training_batches
        finished = epoch > 0 and loop.batch_is_last and isinstance(n_batches, (int, float)) \
            and 0 < n_batches < float("inf")
        done_batches, open_window, counted_epoch = (int(n_batches), False, epoch - 1) if finished else (0, False, epoch)
        batch_progress = {"total": _progress(total, total, total), "current": _progress(*(done_batches,) * 3),
                          "is_last_batch": bool(finished)}
    else:
        processed = epoch + 1 if phase == "epoch_end" else epoch
        epoch_progress = {"total": _progress(epoch + 1, epoch + 1, processed, epoch),
                          "current": _progress(epoch + 1, epoch + 1, processed, epoch)}
        if phase == "batch":  # inside the batch: Lightning runs it again
            cur, tot = (batch_idx + 1, batch_idx + 1, batch_idx, batch_idx), (total + 1, total + 1, total, total)
            done_batches, open_window = batch_idx, True
        elif phase == "ended":  # on_train_batch_end: the batch is processed, not yet completed
            cur = (batch_idx + 1, batch_idx + 1, batch_idx + 1, batch_idx)
            tot = (total + 1, total + 1, total + 1, total)
            done_batches, open_window = batch_idx + 1, not loop.batch_stepped
        else:  # validation after the batch, the batch's end, or the epoch's end
            cur, tot = (batch_idx + 1,) * 4, (total,) * 4
            done_batches, open_window = batch_idx + 1, not loop.batch_stepped
        batch_progress = {"total": _progress(*tot), "current": _progress(*cur),
                          "is_last_batch": bool(loop.batch_is_last)}
        if phase == "validated":
            n = sum(int(b) for b in trainer.num_val_batches if b != float("inf"))
            val_progress = {"total": _progress(n, n, n), "current": _progress(n, n, n), "is_last_batch": True}
        elif phase == "validating":  # inside validation: Lightning runs the validation again
            val_progress = {"total": _progress(1, 1, 0, 0), "current": _progress(1, 1, 0, 0), "is_last_batch": False}

    if automatic:
        accumulate = max(int(trainer.accumulate_grad_batches), 1)
        steps_now = done_batches // accumulate + int(bool(loop.batch_is_last) and done_batches % accumulate > 0)
        steps_now = min(steps_now, global_step)
        opened = int(open_window and mid_epoch)
        optim = {"optimizer": {
            "step": {"total": _progress(global_step), "current": _progress(steps_now)},
            "zero_grad": {"total": _progress(global_step + opened, global_step + opened),
                          "current": _progress(steps_now + opened, steps_now + opened)},
        }}
        manual = {"total": _progress(0), "current": _progress(0)}
    else:
        steps_now = global_step  # Lightning never resets this one per epoch
        optim = {"optimizer": {"step": {"total": _progress(0), "current": _progress(0)},
                               "zero_grad": {"total": _progress(0, 0), "current": _progress(0, 0)}}}
        manual = {"total": _progress(global_step), "current": _progress(steps_now)}
    # Lightning counts the scheduler steps it makes (none with manual optimization)
    configs = trainer.lr_scheduler_configs if automatic else []
    sched_total = sum(int(getattr(cfg.scheduler, "last_epoch", 0) or 0) for cfg in configs)
    epoch_stepped = done_batches > 0 and phase != "batch" and bool(loop.batch_is_last) and not open_window
    sched_now = sum(steps_now // max(int(cfg.frequency), 1) if cfg.interval == "step"
                    else int(epoch_stepped and (counted_epoch + 1) % max(int(cfg.frequency), 1) == 0)
                    for cfg in configs)
    sched_now = min(sched_now, sched_total)

    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped_batches},
        "epoch_loop.batch_progress": batch_progress,
        "epoch_loop.scheduler_progress": {"total": _progress(sched_total), "current": _progress(sched_now)},
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": optim,
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": manual,
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": val_progress,
        "epoch_progress": epoch_progress,
    }

    def untouched(is_last_batch: Optional[bool]) -> dict[str, Any]:
        progress: dict[str, Any] = {"total": _progress(0, 0, 0), "current": _progress(0, 0, 0)}
        if is_last_batch is not None:
            progress["is_last_batch"] = is_last_batch
        return {"state_dict": {}, "batch_progress": progress}

    return {"fit_loop": fit_loop, "validate_loop": untouched(False), "test_loop": untouched(False),
            "predict_loop": untouched(None)}


def _loop_state_from_lightning(checkpoint: dict[str, Any], trainer: "Trainer") -> Optional[dict[str, Any]]:
    """Our loop state for a checkpoint Lightning wrote (it has ``loops`` but no ``featherlight_loop``).

    Lightning's progress counters tell the epoch and, for a checkpoint taken mid-epoch (``ModelCheckpoint``
    after validation or every ``n`` steps), the batch and how far it got; the resumed run continues after
    that batch. Lightning records no data order, so the rest of the epoch is drawn afresh (skipping the
    batches already trained on by index, as Lightning runs only the remaining number of batches).
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit, dict) or "epoch_progress" not in fit:
        return None

    def counters(progress: Any) -> dict[str, int]:
        return {k: int(v) for k, v in ((progress or {}).get("current") or {}).items()}

    def totals(progress: Any) -> dict[str, int]:
        return {k: int(v) for k, v in ((progress or {}).get("total") or {}).items()}

    epoch_now = counters(fit["epoch_progress"])
    batch = fit.get("epoch_loop.batch_progress") or {}
    batch_now, batch_total = counters(batch), totals(batch)
    val_total = totals(fit.get("epoch_loop.val_loop.batch_progress"))
    global_step = int(checkpoint.get("global_step", 0))
    stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
    state: dict[str, Any] = {
        "epoch": epoch_now.get("processed", int(checkpoint.get("epoch", -1)) + 1),
        "global_step": global_step,
        "batches_that_stepped": int(stepped) if stepped is not None else global_step,
        "total_batch_idx": batch_total.get("completed", 0),
        "batch_idx": 0,
        "phase": "epoch_start",
        "batch_stepped": False,
        "batch_is_last": False,
    }
    ready, processed = batch_now.get("ready", 0), batch_now.get("processed", 0)
    completed = batch_now.get("completed", 0)
    mid_epoch = epoch_now.get("started", 0) > epoch_now.get("processed", 0) and ready > 0
    if not mid_epoch or trainer.state.fn != "fit":
        return state
    is_last = bool(batch.get("is_last_batch", False))
    batch_idx = ready - 1
    module = trainer.lightning_module
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    window_end = not module.automatic_optimization or (batch_idx + 1) % accumulate == 0 or is_last
    if processed < ready:  # saved inside the batch: it runs again
        phase, window_end = "batch", False
        state["total_batch_idx"] = batch_total.get("processed", 0)
    elif completed < processed:  # on_train_batch_end
        phase = "ended"
    elif val_total.get("started", 0) > val_total.get("processed", 0):  # inside validation: it runs again
        phase = "validating"
    else:  # validation (or the batch) done
        phase = "validated"
    state.update(epoch=epoch_now.get("processed", 0), batch_idx=batch_idx, phase=phase,
                 batch_stepped=window_end, batch_is_last=is_last, sampler={})
    return state


def _save_checkpoint(trainer: "Trainer", filepath: Union[str, os.PathLike], weights_only: bool = False,
                     storage_options: Optional[Any] = None, background: bool = False,
                     copies: Sequence[Union[str, os.PathLike]] = ()) -> Optional[PendingCheckpoint]:
    """Dump the state and write it through the strategy's checkpoint IO plugin (global rank zero writes the file;
    FSDP's ranks each write their shards); every rank waits for the write, or with ``background`` for the snapshot
    (the write's handle is returned on rank zero)."""
    checkpoint = _dump_checkpoint(trainer, weights_only)
    strategy = trainer.strategy
    if background:
        pending = strategy.save_checkpoint_in_background(checkpoint, [filepath, *copies],
                                                         storage_options=storage_options)
    else:
        pending = strategy.save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        for path in copies:
            if pending is not None:  # a plugin that writes in the background: one write at a time
                pending.wait()
            pending = strategy.save_checkpoint(checkpoint, path, storage_options=storage_options)
    strategy.barrier("save_checkpoint")
    return pending


def _resolve_ckpt_path(trainer: "Trainer", ckpt_path: Any, fn: Any,
                       weights_only: bool = True) -> tuple[Optional[str], Optional[dict]]:
    """``"last"``, ``"best"`` or a path, resolved to an existing file (or None with a warning for "last").

    Returns ``(path, checkpoint)``: for ``"last"`` the checkpoint is already read (each candidate is read to
    verify it), and the restore uses that copy; otherwise it is None."""
    if ckpt_path == "best":
        fn_name = fn.value
        if len(trainer.checkpoint_callbacks) > 1:
            rank_zero_warn(
                f'`.{fn_name}(ckpt_path="best")` is called with Trainer configured with multiple `ModelCheckpoint` '
                "callbacks. It will use the best checkpoint path from first checkpoint callback."
            )
        cb = trainer.checkpoint_callback
        if cb is None:
            raise ValueError(
                f'`.{fn_name}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured. Add a '
                "`ModelCheckpoint` callback (or `enable_checkpointing=True`), or pass a checkpoint path."
            )
        if not getattr(cb, "best_model_path", ""):
            if trainer.fast_dev_run:
                raise ValueError(
                    f'You cannot execute `.{fn_name}(ckpt_path="best")` with `fast_dev_run=True`. Please pass an '
                    f"exact checkpoint path to `.{fn_name}(ckpt_path=...)`"
                )
            raise ValueError(
                f'`.{fn_name}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured to save the best '
                "model. No checkpoint has been saved yet: set `ModelCheckpoint(monitor=..., save_top_k>0)` and fit "
                "first, or pass a checkpoint path."
            )
        return cb.best_model_path, None
    if ckpt_path == "last":
        return _resolve_last(trainer, fn, weights_only)
    path = os.fspath(ckpt_path)
    if not is_remote(path) and not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}. Check `ckpt_path`.")
    return path, None


def _last_candidates(trainer: "Trainer") -> list[str]:
    """What ``ckpt_path="last"`` may resume from, in order of preference: the ``last`` checkpoints (the callbacks'
    ``last_model_path``, ``last*.ckpt``) and the signal-interruption checkpoint, newest first; then every other
    ``*.ckpt`` in the callbacks' ``dirpath``, newest first. A file saved later than ``last.ckpt`` (an export, a
    hand-saved checkpoint) therefore does not win over it."""
    preferred, others = set(), set()
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "last_model_path", ""):
            preferred.add(cb.last_model_path)
        dirpath = getattr(cb, "dirpath", None)
        if dirpath and os.path.isdir(dirpath):
            # escaped: a directory named like `runs/[lr=0.1]` is a path, not a pattern
            for path in glob.glob(os.path.join(glob.escape(dirpath), "*.ckpt")):
                (preferred if os.path.basename(path).startswith("last") else others).add(path)
    preferred.add(_checkpoint_path(trainer))  # where a signal-interrupted run saved itself

    def newest_first(paths: set) -> list[str]:
        # on a tie (coarse timestamps) a "last*" file, which ModelCheckpoint writes after the others
        return sorted((p for p in paths if is_checkpoint_path(p)), reverse=True,
                      key=lambda p: (checkpoint_mtime(p), os.path.basename(p).startswith("last"), p))

    first = newest_first(preferred)
    return first + [p for p in newest_first(others) if p not in first]


def _resolve_last(trainer: "Trainer", fn: Any, weights_only: bool) -> tuple[Optional[str], Optional[dict]]:
    """``ckpt_path="last"``: the first readable candidate of :func:`_last_candidates`, read (the restore uses this
    copy). A fit skips checkpoints holding only weights (they cannot resume training); an unreadable file is
    skipped with a warning; a checkpoint that needs ``weights_only=False`` stops the search with that error."""
    fitting = fn.value == "fit"
    unreadable, weights_only_files = [], []
    for candidate in _last_candidates(trainer):
        try:
            checkpoint = load_checkpoint(candidate, map_location="cpu", weights_only=weights_only)
        except CheckpointError as err:
            if err.reason != "corrupt":  # e.g. needs weights_only=False: falling back would hide that
                raise
            rank_zero_warn(f"Skipping unreadable checkpoint while resolving ckpt_path='last': {err}")
            unreadable.append(candidate)
            continue
        if fitting and "optimizer_states" not in checkpoint:
            weights_only_files.append((candidate, checkpoint.get("global_step")))
            continue
        if unreadable:
            rank_zero_warn(f"ckpt_path='last': the newest checkpoint is unreadable; resuming from {candidate!r}.")
        if weights_only_files:
            step = checkpoint.get("global_step")
            later = [p for p, s in weights_only_files if isinstance(s, int) and isinstance(step, int) and s > step]
            message = (f"ckpt_path='last': skipped {[p for p, _ in weights_only_files]}, saved with "
                       f"`weights_only=True` (a fit cannot resume from weights alone); resuming from {candidate!r}.")
            if later:  # the run resumes from an earlier point than the weights-only file holds
                rank_zero_warn(f"{message} {later} hold(s) a later step than it (global_step={step}).")
            else:
                rank_zero_info(message)
        return candidate, checkpoint
    if weights_only_files:
        names = [p for p, _ in weights_only_files]
        raise WeightsOnlyCheckpointError(
            "Trying to restore optimizer state but checkpoint contains only the model. `.fit(ckpt_path=\"last\")` "
            f"found only checkpoints saved with `weights_only=True` ({names}), which cannot resume training. Load the "
            "weights with `Model.load_from_checkpoint(path)` and fit without `ckpt_path`, or save full checkpoints "
            "(`ModelCheckpoint(save_weights_only=False)`) to resume."
        )
    if unreadable:
        # starting afresh would quietly drop the run these files belonged to
        raise CheckpointError(
            f'`.{fn.value}(ckpt_path="last")`: every checkpoint found is unreadable ({unreadable}). Move them '
            "away (or pass `ckpt_path=None`) to start a new run.", reason="corrupt",
        )
    rank_zero_warn(f'.{fn.value}(ckpt_path="last") is set, but there is no last checkpoint available. No '
                   "checkpoint will be loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.")
    return None, None


def _restore_module_and_callbacks(trainer: "Trainer", path: str, checkpoint: Optional[dict] = None,
                                  weights_only: bool = True) -> dict[str, Any]:
    """Load ``path`` (unless ``checkpoint`` is its content, read already) and restore the module's weights, the
    datamodule and the callbacks (before ``configure_optimizers``, as Lightning does); returns the checkpoint
    for the training state."""
    if checkpoint is None:
        # FSDP loads sharded weights in place here; the state_dict in what it returns reloads harmlessly
        checkpoint = trainer.strategy.load_checkpoint(path, weights_only=weights_only)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path!r} has no 'state_dict': it is not a model checkpoint.", reason="corrupt")
    module = trainer.lightning_module
    trainer.hooks.call_module("on_load_checkpoint", checkpoint)
    load_module_state(module, checkpoint["state_dict"], module.strict_loading, path)
    dm = trainer.datamodule
    if dm is not None:
        key = type(dm).__qualname__
        if key in checkpoint:  # through `load_state_dict` only, as in Lightning 2.x (no `on_load_checkpoint`)
            trainer.hooks.call_datamodule("load_state_dict", checkpoint[key])
    trainer.hooks.call_callbacks("on_load_checkpoint", checkpoint)
    states = checkpoint.get("callbacks") or {}
    known = {key for cb in trainer.callbacks for key in (cb.state_key, getattr(cb, "_legacy_state_key", None))}
    missing = [key for key in states if key not in known]
    if missing:
        rank_zero_warn(
            "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during "
            f"`Trainer` instantiation. Please add the following callbacks: {missing}."
        )
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(getattr(cb, "_legacy_state_key", None)))
        if state:
            cb.load_state_dict(state)
    return checkpoint


def _restore_training_state(trainer: "Trainer", checkpoint: dict[str, Any], path: str) -> None:
    """Optimizers, schedulers, precision, loop position and RNG states (after ``on_fit_start``)."""
    optimizer_states = checkpoint.get("optimizer_states")
    if optimizer_states is None:
        raise WeightsOnlyCheckpointError(
            f"Trying to restore optimizer state but checkpoint contains only the model: {path!r} was saved with "
            "`weights_only=True`. Load the weights with `Model.load_from_checkpoint(path)` and fit without "
            "`ckpt_path`."
        )
    _check_optimizers_match(trainer.optimizers, optimizer_states, checkpoint.get(OPTIMIZER_TYPES_KEY), path)
    trainer.strategy.load_optimizer_states(checkpoint, trainer.optimizers, path)
    for cfg, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    precision = trainer.precision_plugin
    if type(precision).__qualname__ in checkpoint:
        precision.load_state_dict(checkpoint[type(precision).__qualname__])
    elif "native_amp_scaling_state" in checkpoint:  # GradScaler state in Lightning 1.x checkpoints
        precision.load_state_dict(checkpoint["native_amp_scaling_state"])
    if LOOP_KEY not in checkpoint:  # written by Lightning: read its progress counters
        lightning_state = _loop_state_from_lightning(checkpoint, trainer)
        if lightning_state is not None:
            checkpoint = {**checkpoint, LOOP_KEY: lightning_state}
    _restore_loop(trainer.progress, checkpoint)
    if RNG_KEY in checkpoint:
        _set_rng_states(rng_states_from_tensors(checkpoint[RNG_KEY]))
    rank_zero_info(f"Restored all states from the checkpoint at {path}")
    _check_limits_after_restore(trainer)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_optimizers_match(optimizers: list, states: list, saved_types: Any, path: str) -> None:
    """Before loading optimizer states: the checkpoint's optimizers are the ones ``configure_optimizers`` returns
    now (how many, which class, how many parameter groups and parameters in each). Otherwise the states would be
    loaded into the wrong optimizers (Adam's betas and moments into SGD, all of them silently; extra optimizers
    left fresh), so this raises a ``ValueError`` naming the difference.

    The classes are compared when the checkpoint recorded them (featherlight's); for a checkpoint that did not
    (Lightning's), the settings in the parameter groups tell another optimizer class apart. An empty
    ``optimizer_states`` list (e.g. emptied in ``on_load_checkpoint``) restores nothing and is not checked."""
    if not states:
        return
    fix = ("Return the same optimizers (types, order, parameter groups) from `configure_optimizers` as when the "
           "checkpoint was saved, or, to start new optimizers, load only the weights (`Model.load_from_checkpoint"
           "(path)`) and fit without `ckpt_path`, or empty `checkpoint['optimizer_states']` in the module's "
           "`on_load_checkpoint` to keep the loop position with fresh optimizers.")
    where = f"Cannot restore the optimizer states from {path!r}"
    if len(states) != len(optimizers):
        raise ValueError(
            f"{where}: it holds {len(states)} optimizer state(s), but `configure_optimizers` now returns "
            f"{len(optimizers)} optimizer(s). {fix}"
        )
    saved_types = saved_types if isinstance(saved_types, (list, tuple)) and len(saved_types) == len(states) else None
    for i, (opt, state) in enumerate(zip(optimizers, states)):
        if saved_types is not None and isinstance(saved_types[i], str):
            saved = saved_types[i]
            if saved.rsplit(".", 1)[-1] != type(opt).__qualname__.rsplit(".", 1)[-1]:
                raise ValueError(
                    f"{where}: optimizer {i} was {saved.rsplit('.', 1)[-1]} ({saved}) when it was saved, but "
                    f"`configure_optimizers` now returns {type(opt).__name__} ({_class_name(opt)}). {fix}"
                )
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list):  # e.g. a sharded state, loaded by its strategy
            continue
        if len(groups) != len(opt.param_groups):
            raise ValueError(
                f"{where}: optimizer {i} ({type(opt).__name__}) had {len(groups)} parameter group(s), but now has "
                f"{len(opt.param_groups)}. {fix}"
            )
        for g, (saved_group, group) in enumerate(zip(groups, opt.param_groups)):
            n_saved, n_now = len(saved_group.get("params", ())), len(group["params"])
            if n_saved != n_now:
                raise ValueError(
                    f"{where}: parameter group {g} of optimizer {i} ({type(opt).__name__}) had {n_saved} "
                    f"parameter(s), but now has {n_now}. {fix}"
                )
        if saved_types is None:
            # settings of the new class the saved groups lack, and saved settings the new groups do not have (a
            # scheduler's `initial_lr` aside): another optimizer class. One-sided differences are torch versions
            # adding settings, or a scheduler added or removed.
            saved_keys = set().union(*(set(grp) for grp in groups)) - {"params", "initial_lr"}
            now_keys = set().union(*(set(grp) for grp in opt.param_groups)) | set(opt.defaults)
            lacking, foreign = set(opt.defaults) - saved_keys, saved_keys - now_keys
            if lacking and foreign:
                raise ValueError(
                    f"{where}: optimizer {i} was saved from another optimizer class than the "
                    f"{type(opt).__name__} `configure_optimizers` now returns: its parameter groups have "
                    f"{sorted(foreign)}, which {type(opt).__name__} does not use, and lack {sorted(lacking)}. {fix}"
                )


def _check_limits_after_restore(trainer: "Trainer") -> None:
    """A resumed fit whose ``max_epochs``/``max_steps`` the checkpoint has already passed would return without
    training a step: ``max_epochs`` below the checkpoint's epoch raises (Lightning's error), ``max_steps`` below its
    step (or ``max_epochs`` equal to the epoch the checkpoint is inside) warns, a limit the checkpoint has just
    reached is an INFO line."""
    progress = trainer.progress
    epoch, step = progress.epoch, progress.global_step
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_epochs is not None and max_epochs != -1:
        if epoch > max_epochs:
            raise MisconfigurationException(
                f"You restored a checkpoint with current_epoch={epoch}, but you have set "
                f"Trainer(max_epochs={max_epochs}). `max_epochs` counts the checkpoint's epochs too: set it above "
                f"{epoch} to train more, or fit without `ckpt_path` to start a new run."
            )
        if epoch == max_epochs:
            if progress.phase.mid_epoch:
                rank_zero_warn(
                    f"You restored a checkpoint taken inside epoch {epoch} (counted from 0), but you have set "
                    f"Trainer(max_epochs={max_epochs}): the run stops without training the rest of that epoch. "
                    f"`max_epochs` counts the checkpoint's epochs too: set it to at least {epoch + 1} to finish it."
                )
            else:
                rank_zero_info(f"The restored checkpoint already completed `max_epochs={max_epochs}`: nothing is "
                               "left to train.")
            return
    if max_steps != -1:
        if step > max_steps:
            rank_zero_warn(
                f"You restored a checkpoint with global_step={step}, but you have set Trainer(max_steps={max_steps}): "
                f"the run stops without training a step. `max_steps` counts the checkpoint's steps too: set it above "
                f"{step} to train more, or fit without `ckpt_path` to start a new run."
            )
        elif step == max_steps:
            rank_zero_info(f"The restored checkpoint already reached `max_steps={max_steps}`: nothing is left to "
                           "train.")


def _restore_loop(progress: LoopState, checkpoint: dict[str, Any]) -> None:
    """The loop counters, and a mid-epoch position for the fit loop to continue from."""
    state = checkpoint.get(LOOP_KEY)
    if state is None:  # a Lightning checkpoint without usable progress trackers: its epoch and step
        fit = (checkpoint.get("loops") or {}).get("fit_loop", {})
        processed = fit.get("epoch_progress", {}).get("current", {}).get("processed")
        stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
        progress.epoch = int(processed) if processed is not None else int(checkpoint.get("epoch", -1)) + 1
        progress.global_step = int(checkpoint.get("global_step", 0))
        progress.batches_that_stepped = int(stepped) if stepped is not None else progress.global_step
        return
    progress.load_counters(state)
    if progress.phase.mid_epoch:  # the fit loop continues from the exact position
        progress.resume = ResumePoint(state)
