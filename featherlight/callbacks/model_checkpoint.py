"""ModelCheckpoint: save the model periodically, keep the best ``k`` by a monitored metric, and a ``last``."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
import uuid
import weakref
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional, Union

import torch
from torch import Tensor

from featherlight.callbacks.checkpoint import Checkpoint
from featherlight.io.async_checkpoint_io import AsyncCheckpointIO, PendingCheckpoint
from featherlight.utilities.exceptions import CheckpointError, MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import WarningCache, rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_warnings = WarningCache()
_PATH = Union[str, "os.PathLike[str]"]

# one ``{name}`` / ``{name:spec}`` field of a filename template
_FIELD = re.compile(r"\{([^{}:]*)(?::([^{}]*))?\}")


def _is_remote(path: _PATH) -> bool:
    return "://" in os.fspath(path)


# what the callback tells about the files it keeps: in the background mode these change only once a file is complete
_PUBLISHED = ("best_k_models", "kth_best_model_path", "kth_value", "best_model_score", "best_model_path",
              "last_model_path", "current_score")


class _BackgroundSave:
    """One hook's saves in the background mode: the files it writes (one snapshot for all), the bookkeeping from
    before and after, and what must wait until the files are complete (removals, the ``last`` link, loggers)."""

    def __init__(self) -> None:
        self.before: Optional[dict[str, Any]] = None  # set when the hook first touches the bookkeeping
        self.after: dict[str, Any] = {}
        self.paths: list[str] = []
        self.removals: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.pending: Optional[PendingCheckpoint] = None


class ModelCheckpoint(Checkpoint):
    r"""Save the model during ``fit``: every ``n`` epochs, steps or some time, the best ``k`` by a metric, a ``last``.

    Args:
        dirpath: directory for the checkpoints. Default: ``{logger.save_dir}/{logger.name}/version_{v}/checkpoints``
            with the trainer's first logger, else ``{trainer.default_root_dir}/checkpoints``; resolved in ``setup``.
        filename: file name template without extension, formatted with the logged metrics plus ``epoch`` and
            ``step``, e.g. ``"{epoch}-{val_loss:.2f}"`` gives ``epoch=3-val_loss=0.12.ckpt``. Default
            ``"{epoch}-{step}"``. A name that is not among the metrics formats as ``0``.
        monitor: logged metric to rank checkpoints by. ``None`` ranks nothing: the newest checkpoint is kept
            (``save_top_k=1``) or all are (``save_top_k=-1``).
        verbose: log a line whenever a checkpoint is (or is not) saved.
        save_last: ``True`` also keeps a copy at ``last.ckpt``; ``"link"`` makes ``last.ckpt`` a symbolic link to
            the newest checkpoint instead (a copy where links cannot be made).
        save_top_k: how many checkpoints to keep: the best ``k`` by ``monitor``; ``0`` saves none (``last`` only)
            and ``-1`` keeps every one. Without ``monitor`` only ``-1``, ``0`` and ``1`` make sense.
        save_on_exception: also save a checkpoint (named by ``filename``) when the run raises.
        save_weights_only: save only the model weights (no optimizer, loop or callback state).
        mode: ``"min"`` or ``"max"``: whether smaller or larger values of ``monitor`` are better.
        auto_insert_metric_name: write ``name=`` in front of each field of ``filename``. Turn it off for templates
            like ``"epoch{epoch:02d}-loss{val_loss:.2f}"``.
        every_n_train_steps: save every this many optimizer steps (checked at the end of each training batch).
        train_time_interval: save when at least this much time passed since the previous check (a ``timedelta``).
        every_n_epochs: save every this many epochs (at train epoch end or validation end, see
            ``save_on_train_epoch_end``). When none of the three triggers is set it is ``1``. The three
            triggers are mutually exclusive.
        save_on_train_epoch_end: check at the end of the training epoch (``True``) or at the end of validation
            (``False``). ``None`` picks the end of the training epoch when validation runs once at the end of
            every epoch (or never), and the end of validation otherwise.
        enable_version_counter: when a file of the same name exists, save to ``name-v1.ckpt``, ``name-v2.ckpt``...
            instead of overwriting it.
        async_save: write the files on a background thread (featherlight addition). When a save is due the state is
            copied into host memory (pinned memory for CUDA tensors) and training goes on while the file is
            written; a save's checkpoint and ``last.ckpt`` share one copy. ``best_model_path``,
            ``last_model_path``, ``best_k_models`` (and the other attributes below), the removal of files that left
            the top ``k``, the ``save_last="link"`` link and loggers' ``after_save_checkpoint`` change only once the
            new file is complete (at this callback's next hook), so a crash mid-write leaves the previous files as
            they were. One write at a time: a save first waits for the previous write. ``fit`` returns once the
            last write has finished; a failed write raises a ``CheckpointError`` naming the file and the cause at
            the next save or at the end of ``fit``. ``Trainer(plugins=[AsyncCheckpointIO()])`` turns this on for
            every checkpoint of the run. Sharded FSDP checkpoints are still written synchronously.

    After each save every logger's ``after_save_checkpoint`` is called. ``best_model_path``,
    ``best_model_score``, ``best_k_models`` (path -> score), ``kth_best_model_path``, ``last_model_path`` and
    ``current_score`` describe what was saved; they are part of the callback state, so a resumed run continues
    the ranking. Nothing is saved during the sanity check, with ``fast_dev_run``, outside ``fit``, or twice at
    the same ``global_step``.

    Differences from Lightning:

    * a ``/`` in the *formatted* file name (from a metric like ``val/loss``, or written in ``filename``) is
      replaced by ``_``: ``filename="{val/loss:.2f}"`` gives ``val_loss=0.12.ckpt`` in ``dirpath``, where
      Lightning writes ``val/loss=0.12.ckpt``, i.e. a file in a ``val`` sub-directory. Use ``dirpath`` for
      directories;
    * a file is never removed while any ``ModelCheckpoint`` of the trainer still refers to it (as its
      ``best_model_path``, ``last_model_path`` or one of its ``best_k_models``), e.g. when two callbacks with
      ``enable_version_counter=False`` write the same name;
    * with manual optimization the step/time triggers behave as with automatic optimization (Lightning has a
      separate path that ignores ``train_time_interval``);
    * ``save_last`` is not written at the end of training under ``fast_dev_run``.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    monitors_metrics = True

    def __init__(
        self,
        dirpath: Optional[_PATH] = None,
        filename: Optional[str] = None,
        monitor: Optional[str] = None,
        verbose: bool = False,
        save_last: Optional[Union[bool, Literal["link"]]] = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[timedelta] = None,
        every_n_epochs: Optional[int] = None,
        save_on_train_epoch_end: Optional[bool] = None,
        enable_version_counter: bool = True,
        async_save: bool = False,
    ) -> None:
        super().__init__()
        self.async_save = async_save
        self._in_background = async_save  # decided in setup: also when the strategy's plugin writes in the background
        self._gathering: Optional[_BackgroundSave] = None  # the saves of the hook running now
        self._pending: Optional[_BackgroundSave] = None  # written in the background, not yet published
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter

        if mode not in ("min", "max"):
            raise MisconfigurationException(f"`mode` can be min, max but got {mode}")
        self.mode = mode
        self.kth_value: Tensor = torch.tensor(float("inf") if mode == "min" else float("-inf"))

        self.current_score: Optional[Tensor] = None
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Optional[Tensor] = None
        self.best_model_path = ""
        self.last_model_path = ""
        # the step of the latest save: no second save at the same step (and none before the first step)
        self._last_global_step_saved = 0
        self._last_checkpoint_saved = ""  # the newest real file written (what save_last="link" points at)
        self._last_time_checked: Optional[float] = None
        self._defer_save_until_validation = False
        self._val_has_run = False

        if dirpath is not None and os.fspath(dirpath) and not _is_remote(dirpath):
            dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath)))
        self.dirpath: Optional[str] = os.fspath(dirpath) if dirpath else None
        self.filename = filename

        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        self._every_n_epochs: int = every_n_epochs or 0
        self._every_n_train_steps: int = every_n_train_steps or 0
        self._train_time_interval: Optional[timedelta] = train_time_interval
        self._validate_configuration()

    def _validate_configuration(self) -> None:
        if self.save_top_k < -1:
            raise MisconfigurationException(f"Invalid value for save_top_k={self.save_top_k}. Must be >= -1")
        if self._every_n_train_steps < 0:
            raise MisconfigurationException(
                f"Invalid value for every_n_train_steps={self._every_n_train_steps}. Must be >= 0"
            )
        if self._every_n_epochs < 0:
            raise MisconfigurationException(f"Invalid value for every_n_epochs={self._every_n_epochs}. Must be >= 0")
        triggers = (self._every_n_train_steps >= 1) + (self._every_n_epochs >= 1) + (
            self._train_time_interval is not None)
        if triggers > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={self._every_n_train_steps}, "
                f"every_n_epochs={self._every_n_epochs} and train_time_interval={self._train_time_interval} "
                "should be mutually exclusive: set only one of them."
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={self.save_top_k}, monitor=None) is not a valid configuration: "
                "without a `monitor=` metric there is nothing to rank the top k by. Set `monitor=`, or use "
                "save_top_k=1 (keep the newest), -1 (keep all) or 0 (none)."
            )

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> Optional[int]:
        return self._every_n_epochs

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        dirpath = trainer.strategy.broadcast(self._resolve_ckpt_dir(trainer))
        self.dirpath = dirpath
        if stage == "fit" and (self.save_top_k != 0 or self.save_last or self.save_on_exception):
            # found now rather than when the first save fails, after an epoch of training; rank zero writes, so
            # its view of the directory decides for every rank
            problem = trainer.strategy.broadcast(_unwritable_dir(dirpath) if trainer.is_global_zero else None)
            if problem is not None:
                error, reason = problem
                raise (NotADirectoryError if error == "file" else PermissionError)(
                    f"ModelCheckpoint cannot save to {dirpath!r}: {reason}. Pass a writable directory as "
                    "`ModelCheckpoint(dirpath=...)` (without `dirpath`, the logger's directory or "
                    "`Trainer(default_root_dir=...)` decides where checkpoints go)."
                )
        self._in_background = self.async_save or isinstance(trainer.strategy.checkpoint_io, AsyncCheckpointIO)
        if trainer.is_global_zero and stage == "fit":
            self._warn_if_dir_not_empty(dirpath)
        if self.save_last == "link" and _is_remote(dirpath):
            raise ValueError(
                f"`ModelCheckpoint(save_last='link')` is only supported for local file paths, got "
                f"`dirpath={dirpath}`. Pass `save_last=True` to write `last.ckpt` as a copy instead."
            )

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._last_time_checked = time.monotonic()
        self._val_has_run = False

    def idle_hooks(self, trainer: "Trainer") -> set[str]:
        """The per-batch check can be skipped without a per-step trigger."""
        return {"on_train_batch_end"} if self._every_n_train_steps < 1 and self._train_time_interval is None else set()

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, ModelCheckpoint)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save when ``every_n_train_steps`` or ``train_time_interval`` is due."""
        every_n = self._every_n_train_steps
        interval = self._train_time_interval
        if every_n < 1 and interval is None:
            return  # no per-step trigger: the common case costs this compare only
        skip_step = every_n < 1 or trainer.global_step % every_n != 0
        skip_time = True
        now = 0.0
        if interval is not None:
            now = time.monotonic()
            previous = self._last_time_checked
            skip_time = previous is None or (now - previous) < interval.total_seconds()
            # clocks differ between processes: rank 0 decides for everyone
            skip_time = trainer.strategy.broadcast(skip_time)
        if skip_step and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now

        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None:
            if self.monitor not in candidates:
                # the metric comes from validation (not logged yet): save when validation ends
                self._defer_save_until_validation = True
                return
            if (not self._should_save_on_train_epoch_end(trainer) and trainer.is_last_batch
                    and self._validation_follows(trainer)):
                # the value at hand is from the previous validation; validation is about to refresh it
                self._defer_save_until_validation = True
                return
        if self._should_skip_saving_checkpoint(trainer):
            return
        with self._saving(trainer):
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._publish_if_written(trainer)
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            with self._saving(trainer):
                self._save_epoch_checkpoints(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_has_run = True
        self._publish_if_written(trainer)
        if self._should_skip_saving_checkpoint(trainer) or self._should_save_on_train_epoch_end(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        with self._saving(trainer):
            if self._defer_save_until_validation:
                self._defer_save_until_validation = False
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
                return
            self._save_epoch_checkpoints(trainer, candidates)

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        # the run is over: a write still going finishes now (its failure is a warning: the run's error comes first)
        self._wait_for_pending(trainer, raise_failure=False)
        if not self._should_save_on_exception(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(metrics=candidates)
        with self._saving(trainer):
            self._save_checkpoint(trainer, filepath)
            self._save_last_checkpoint(trainer, candidates)
        self._wait_for_pending(trainer, raise_failure=False)
        rank_zero_info(f"{type(exception).__name__} raised ({exception}); saved a checkpoint to {filepath}")

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # `save_last` promises a last checkpoint even when no top-k checkpoint was ever written
        if self.save_last and not self._last_checkpoint_saved and not trainer.fast_dev_run:
            with self._saving(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # training is over: what `on_fit_end` and the code after `fit` read describes complete files
        self._wait_for_pending(trainer)

    def teardown(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        # the end of every run (also an interrupted one): no write outlives it unpublished
        self._wait_for_pending(trainer, raise_failure=sys.exc_info()[1] is None)

    # ------------------------------------------------------------------ background writes
    def _bookkeeping(self) -> dict[str, Any]:
        return {name: dict(self.best_k_models) if name == "best_k_models" else getattr(self, name)
                for name in _PUBLISHED}

    def _set_bookkeeping(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(self, name, value)

    @contextlib.contextmanager
    def _saving(self, trainer: "Trainer") -> Iterator[None]:
        """Around a hook's saves. In the background mode the files the hook writes are gathered and written
        together when it ends (one snapshot, taken then), and what they change is published once they are complete.
        Synchronously, nothing happens here."""
        if not self._in_background or self._gathering is not None:
            yield
            return
        save = self._gathering = _BackgroundSave()
        try:
            yield
        except BaseException:
            if save.before is not None:
                self._set_bookkeeping(save.before)  # nothing was written: nothing changes
            raise
        finally:
            self._gathering = None
        if save.before is None:
            return  # the hook did not save
        save.after = self._bookkeeping()
        if save.paths:
            paths = list(dict.fromkeys(save.paths))  # one file per path, in the order they were saved
            try:
                save.pending = trainer.save_checkpoint(paths[0], weights_only=self.save_weights_only,
                                                       background=True, copies=paths[1:])
            finally:
                self._set_bookkeeping(save.before)  # what is complete on disk, until the new files are
        self._pending = save
        if save.pending is None:  # nothing written here (another rank writes), or written already
            self._publish(trainer)

    def _touch_bookkeeping(self, trainer: "Trainer") -> None:
        """Called before a save reads or changes the bookkeeping: the previous write must be published first."""
        save = self._gathering
        if save is not None and save.before is None:
            self._wait_for_pending(trainer)
            save.before = self._bookkeeping()

    def _publish_if_written(self, trainer: "Trainer") -> None:
        pending = self._pending
        if pending is not None and (pending.pending is None or pending.pending.done()):
            self._wait_for_pending(trainer)

    def _wait_for_pending(self, trainer: "Trainer", raise_failure: bool = True) -> None:
        """Wait for the background write, then publish what it changed; a failed write publishes nothing (the
        previous files stay the ones described) and is raised, or warned about while another error propagates."""
        save = self._pending
        if save is None:
            return
        if save.pending is not None:
            try:
                save.pending.wait()
            except CheckpointError as err:
                self._pending = None
                if raise_failure:
                    raise
                rank_zero_warn(str(err))
                return
            if save.pending.failed:  # raised already, by the checkpoint IO plugin
                self._pending = None
                return
        self._publish(trainer)

    def _publish(self, trainer: "Trainer") -> None:
        save, self._pending = self._pending, None
        if save is None:
            return
        self._set_bookkeeping(save.after)
        if trainer.is_global_zero:
            for target, linkpath in save.links:
                _point_link(target, linkpath)
        for path in save.removals:
            if not self._is_referenced(trainer, path):
                trainer.strategy.remove_checkpoint(path)
        if trainer.is_global_zero:
            for _ in dict.fromkeys(save.paths):
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(weakref.proxy(self))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": self.best_k_models,
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dirpath = state_dict.get("dirpath", self.dirpath)
        if saved_dirpath == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = state_dict.get("best_k_models", self.best_k_models)
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            rank_zero_warn(
                f"The dirpath has changed from {saved_dirpath!r} to {self.dirpath!r}, therefore `best_model_score`, "
                "`kth_best_model_path`, `kth_value`, `last_model_path` and `best_k_models` won't be reloaded. Only "
                "`best_model_path` will be reloaded. (Resume with the same `dirpath` to keep tracking the top-k "
                "checkpoints.)"
            )
        self.best_model_path = state_dict["best_model_path"]

    # ------------------------------------------------------------------ when to save
    def _should_skip_saving_checkpoint(self, trainer: "Trainer") -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_exception(self, trainer: "Trainer") -> bool:
        return (
            bool(self.save_on_exception)
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and self._last_global_step_saved != trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: "Trainer") -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # validation not in every epoch: the training epoch end is the reliable place... unless it isn't
        # known when validation runs, in which case we wait for it
        if trainer.check_val_every_n_epoch != 1:
            return False
        if _sum_batches(trainer.num_val_batches) == 0:
            return True  # no validation at all
        # validation once, at the end of the epoch: its metrics are there at train epoch end
        return trainer.val_check_interval == 1.0

    @staticmethod
    def _validation_follows(trainer: "Trainer") -> bool:
        """Will validation run right after the current (last) training batch?"""
        if getattr(trainer, "enable_validation", True) is False or _sum_batches(trainer.num_val_batches) <= 0:
            return False
        every = trainer.check_val_every_n_epoch
        return every is None or (trainer.current_epoch + 1) % every == 0

    def _save_epoch_checkpoints(self, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk_checkpoint(trainer, candidates)
        # `last` follows a new checkpoint; a link is re-pointed every time
        if self._last_global_step_saved == trainer.global_step or (
            self.save_last == "link" and self._last_checkpoint_saved
        ):
            self._save_last_checkpoint(trainer, candidates)

    # ------------------------------------------------------------------ what to save
    def _monitor_candidates(self, trainer: "Trainer") -> dict[str, Tensor]:
        candidates = dict(trainer.callback_metrics)
        # `self.log("epoch", e)` stores a float: names need the int
        epoch = candidates.get("epoch")
        candidates["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
        step = candidates.get("step")
        candidates["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def _save_topk_checkpoint(self, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        if self.save_top_k == 0:
            return
        self._touch_bookkeeping(trainer)
        if self.monitor is None:
            self._save_none_monitor_checkpoint(trainer, candidates)
            return
        if self.monitor not in candidates:
            message = (
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned "
                f"metrics: {list(candidates)}. HINT: Did you call `log({self.monitor!r}, value)` in the "
                "`LightningModule`?"
            )
            if self._val_has_run:
                raise MisconfigurationException(message)
            # before any validation ran the metric may simply not exist yet; warn once per run
            trainer.warnings.warn(message)
        self._save_monitor_checkpoint(trainer, candidates)

    def check_monitor_top_k(self, trainer: "Trainer", current: Optional[Tensor] = None) -> bool:
        """Whether ``current`` earns a place among the top ``k`` (decided by all processes together)."""
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        better = bool(current < kth) if self.mode == "min" else bool(current > kth)
        return trainer.strategy.reduce_boolean_decision(better)

    def _save_monitor_checkpoint(self, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        current = candidates.get(self.monitor)  # type: ignore[arg-type]
        if current is not None and not isinstance(current, Tensor):
            current = torch.tensor(float(current))
        if self.check_monitor_top_k(trainer, current):
            self._update_best_and_save(current, trainer, candidates)  # type: ignore[arg-type]
        elif self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}: {self.monitor!r} "
                f"was not in top {self.save_top_k}"
            )

    def _save_none_monitor_checkpoint(self, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, self.best_model_path)
        # the path is part of the state written into the file: set it first
        previous, self.best_model_path = self.best_model_path, filepath
        self._save_checkpoint(trainer, filepath)
        if self.save_top_k == 1 and previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _update_best_and_save(self, current: Tensor, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = None
        if len(self.best_k_models) == k and k > 0:
            dropped = self.kth_best_model_path
            self.best_k_models.pop(dropped)

        current = current.detach().clone()
        if torch.isnan(current):
            # a NaN ranks last
            current = torch.tensor(float("inf") if self.mode == "min" else float("-inf"), device=current.device)

        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, dropped)
        self.current_score = current
        self.best_k_models[filepath] = current
        score = lambda path: float(self.best_k_models[path])  # noqa: E731
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=score)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=score)
        self.best_model_score = self.best_k_models[self.best_model_path]

        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}: {self.monitor!r} "
                f"reached {float(current):0.5f} (best {float(self.best_model_score):0.5f}), saving model to "
                f"{filepath!r} as top {k}"
            )
        self._save_checkpoint(trainer, filepath)
        if dropped and self._should_remove_checkpoint(trainer, dropped, filepath):
            self._remove_checkpoint(trainer, dropped)

    def _save_last_checkpoint(self, trainer: "Trainer", candidates: dict[str, Tensor]) -> None:
        if not self.save_last:
            return
        self._touch_bookkeeping(trainer)
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        previous, self.last_model_path = self.last_model_path, filepath
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            if self._gathering is not None:
                self._gathering.links.append((self._last_checkpoint_saved, filepath))  # once the target is complete
            else:
                self._link_checkpoint(trainer, self._last_checkpoint_saved, filepath)
        else:
            self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_checkpoint(self, trainer: "Trainer", filepath: str) -> None:
        if self._in_background:
            if self._gathering is None:  # called outside this class's hooks: a save of its own
                with self._saving(trainer):
                    self._save_checkpoint(trainer, filepath)
                return
            self._touch_bookkeeping(trainer)
            self._gathering.paths.append(filepath)  # written when the hook ends
            self._last_global_step_saved = trainer.global_step
            self._last_checkpoint_saved = filepath
            return
        trainer.save_checkpoint(filepath, weights_only=self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(weakref.proxy(self))

    @staticmethod
    def _link_checkpoint(trainer: "Trainer", filepath: str, linkpath: str) -> None:
        """Point ``linkpath`` at ``filepath`` (relative symbolic link; a copy where links are not allowed)."""
        if trainer.is_global_zero:
            _point_link(filepath, linkpath)
        trainer.strategy.barrier("ModelCheckpoint._link_checkpoint")

    # ------------------------------------------------------------------ names and files
    def _format_checkpoint_name(
        self,
        filename: Optional[str],
        metrics: dict[str, Any],
        prefix: Optional[str] = None,
        auto_insert_metric_name: bool = True,
    ) -> str:
        if not filename:
            filename = "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"

        def field(match: "re.Match[str]") -> str:
            name, spec = match.group(1), match.group(2) or ""
            value = metrics.get(name)
            if value is None:
                value = torch.tensor(0)
            text = format(value, spec)
            return f"{name}{self.CHECKPOINT_EQUALS_CHAR}{text}" if auto_insert_metric_name else text

        filename = _FIELD.sub(field, filename)
        if prefix is not None:
            filename = self.CHECKPOINT_JOIN_CHAR.join([prefix, filename])
        # a metric such as "val/loss" must not turn into a sub-directory
        filename = filename.replace("/", "_")
        if os.sep != "/":
            filename = filename.replace(os.sep, "_")
        return filename

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: Optional[str] = None,
        ver: Optional[int] = None,
        prefix: Optional[str] = None,
    ) -> str:
        """The checkpoint path for ``metrics``, from ``filename`` (default: the callback's template).

        Example::

            >>> ckpt = ModelCheckpoint(dirpath="/tmp", filename="{epoch}-{val_loss:.2f}")
            >>> os.path.basename(ckpt.format_checkpoint_name(dict(epoch=2, val_loss=0.123456)))
            'epoch=2-val_loss=0.12.ckpt'
            >>> os.path.basename(ckpt.format_checkpoint_name(dict(epoch=2), ver=1))
            'epoch=2-val_loss=0.00-v1.ckpt'
            >>> os.path.basename(ckpt.format_checkpoint_name({}, filename="{val/acc:.1f}"))
            'val_acc=0.0.ckpt'
        """
        name = self._format_checkpoint_name(
            filename or self.filename, metrics, prefix=prefix, auto_insert_metric_name=self.auto_insert_metric_name
        )
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name = f"{name}{self.FILE_EXTENSION}"
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _get_metric_interpolated_filepath_name(
        self, candidates: dict[str, Tensor], trainer: "Trainer", del_filepath: Optional[str] = None
    ) -> str:
        filepath = self.format_checkpoint_name(candidates)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            # the file about to be replaced (dropped from the top k) may be overwritten
            while self.file_exists(filepath, trainer) and filepath != del_filepath:
                filepath = self.format_checkpoint_name(candidates, ver=version)
                version += 1
        return filepath

    def _resolve_ckpt_dir(self, trainer: "Trainer") -> str:
        """``dirpath`` if given, else ``{save_dir}/{name}/version_{v}/checkpoints`` of the first logger, else
        ``{default_root_dir}/checkpoints``."""
        if self.dirpath is not None:
            return self.dirpath
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return os.path.join(save_dir, str(logger.name), version, "checkpoints")
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def _find_last_checkpoints(self, trainer: "Trainer") -> set[str]:
        """Paths of the ``last`` checkpoints (``last.ckpt``, ``last-v1.ckpt``...) in the checkpoint directory."""
        directory = self._resolve_ckpt_dir(trainer)
        if not os.path.isdir(directory):
            return set()
        pattern = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-(\d+))?")
        out = set()
        for entry in os.listdir(directory):
            stem, ext = os.path.splitext(entry)
            if ext == self.FILE_EXTENSION and pattern.match(stem):
                out.add(os.path.normpath(os.path.join(directory, entry)))
        return out

    def _warn_if_dir_not_empty(self, dirpath: Optional[str]) -> None:
        if self.save_top_k != 0 and dirpath and os.path.isdir(dirpath) and os.listdir(dirpath):
            rank_zero_warn(f"Checkpoint directory {dirpath} exists and is not empty.")

    def file_exists(self, filepath: _PATH, trainer: "Trainer") -> bool:
        """Whether ``filepath`` exists, as rank 0 sees it (every process gets the same answer)."""
        exists = os.path.lexists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.reduce_boolean_decision(exists, all=False)

    def _is_referenced(self, trainer: "Trainer", filepath: str) -> bool:
        """Is ``filepath`` still one of the files a ModelCheckpoint of ``trainer`` keeps?"""
        target = os.path.abspath(filepath)
        callbacks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, ModelCheckpoint)]
        if self not in callbacks:
            callbacks.append(self)
        for cb in callbacks:
            kept = [cb.best_model_path, cb.last_model_path, *cb.best_k_models]
            if any(path and os.path.abspath(path) == target for path in kept):
                return True
        return False

    def _should_remove_checkpoint(self, trainer: "Trainer", previous: str, current: str) -> bool:
        """Remove ``previous``? Not when it is ``current`` (overwritten), the checkpoint the run resumed from,
        outside the checkpoint directory, or still kept by a ModelCheckpoint."""
        if previous == current:
            return False
        if _is_remote(previous):
            return True
        previous_abs = os.path.abspath(previous)
        if trainer.ckpt_path is not None and os.path.abspath(os.fspath(trainer.ckpt_path)) == previous_abs:
            return False
        if self.dirpath is None:
            return False
        directory = os.path.abspath(self.dirpath)
        if os.path.commonpath([directory, previous_abs]) != directory or previous_abs == directory:
            return False
        return not self._is_referenced(trainer, previous)

    def _remove_checkpoint(self, trainer: "Trainer", filepath: str) -> None:
        """Delete ``filepath`` (a file, a link or a sharded directory, local or remote) through the strategy's
        checkpoint IO plugin, on global rank zero (in the background mode: once the hook's new files are complete)."""
        if self._gathering is not None:
            self._gathering.removals.append(filepath)
            return
        trainer.strategy.remove_checkpoint(filepath)

    def to_yaml(self, filepath: Optional[_PATH] = None) -> None:
        """Write ``best_k_models`` (path -> score) to ``filepath`` (default ``{dirpath}/best_k_models.yaml``)."""
        import yaml

        scores = {path: float(score) for path, score in self.best_k_models.items()}
        if filepath is None:
            if not self.dirpath:
                raise ValueError("`to_yaml()` needs `filepath` when the checkpoint directory is not resolved yet.")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w") as f:
            yaml.safe_dump(scores, f)


def _unwritable_dir(dirpath: Optional[str]) -> Optional[tuple[str, str]]:
    """Why checkpoints could not be written to the local directory ``dirpath`` (which need not exist yet: its
    nearest existing ancestor is what is checked), as ``("file" | "permission", reason)``; None when they can, or
    for a remote (fsspec) path, which is left to the filesystem."""
    if not dirpath or _is_remote(dirpath):
        return None
    path = os.path.abspath(dirpath)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if not os.path.isdir(path):
        return "file", f"{path!r} is an existing file, not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        what = "the directory" if path == os.path.abspath(dirpath) else f"its parent directory {path!r}"
        return "permission", f"{what} is not writable by this process"
    return None


def _point_link(filepath: str, linkpath: str) -> None:
    """Make ``linkpath`` a relative symbolic link to ``filepath`` (a copy where links are not allowed)."""
    if os.path.abspath(filepath) == os.path.abspath(linkpath):
        return
    if os.path.isdir(linkpath) and not os.path.islink(linkpath):
        shutil.rmtree(linkpath)
    # built beside it, then renamed over it: `last.ckpt` never stops existing
    tmp = os.path.join(os.path.dirname(linkpath), f".{os.path.basename(linkpath)}.{uuid.uuid4().hex}.tmp")
    try:
        os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
    except OSError:  # e.g. Windows without the privilege to create links
        shutil.copy(filepath, tmp)
    os.replace(tmp, linkpath)


def _sum_batches(num_batches: Any) -> float:
    if isinstance(num_batches, (list, tuple)):
        return sum(num_batches)
    return num_batches or 0
