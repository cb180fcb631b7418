"""``trainer.fit_loop``: the counters Lightning programs read from Lightning's fit loop, as a read-only view.

featherlight's loops are plain functions (``fit_loop.run_fit``) and their counters live in ``trainer.progress``
(a :class:`~featherlight.trainer.progress.LoopState`). Lightning programs and libraries read some of them through
Lightning's loop objects, e.g. ``trainer.fit_loop.max_epochs``, ``trainer.fit_loop.epoch_progress.current.completed``
or ``trainer.fit_loop.epoch_loop._batches_that_stepped``. :class:`FitLoopView` answers those reads from
``trainer.progress`` and the trainer's flags; it holds no state of its own (a new view is made on each access) and
cannot be written to: set the trainer's flags (``trainer.max_epochs``...) instead.

What it has (Lightning's names and meanings):

* ``max_epochs``, ``min_epochs``, ``max_steps``, ``min_steps``: the trainer's flags.
* ``epoch_progress.current`` / ``.total``: ``ready``, ``started``, ``processed``, ``completed`` epochs. Between
  epochs all four are the number of finished epochs (``completed`` is ``trainer.current_epoch``); inside an epoch
  ``ready`` and ``started`` count it too, and ``processed`` does from ``on_train_epoch_end`` on. ``current`` equals
  ``total`` (Lightning's differ only after a resume inside an epoch). In ``on_train_epoch_start`` the epoch is not
  counted yet (Lightning counts it as ``ready`` there).
* ``batch_idx`` / ``total_batch_idx`` (also on ``epoch_loop``): the index of the current training batch, in the
  epoch and over all epochs. Between epochs ``batch_idx`` is the finished epoch's last batch's, or ``-1`` before
  the first epoch and after an epoch that a stop (``max_steps``, ``should_stop``) ended before its last batch
  (Lightning still reports the batch it stopped at there).
* ``epoch_loop``: ``batch_idx``, ``total_batch_idx``, ``global_step``, ``max_steps``, ``min_steps`` and
  ``_batches_that_stepped`` (training batches that ended an accumulation window: the step loggers see).

These are the names we found Lightning programs and libraries reading; Lightning's loops have many more
attributes (the loop objects themselves, ``run``, ``state_dict``, ``restarting``...), which featherlight does not
have: read ``trainer.progress`` for anything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from featherlight.trainer.progress import Phase

# the Trainer is annotated by name: it imports this module


class _ReadOnly:
    """Reads only: writing an attribute is an error that names what to set instead."""

    __slots__ = ("_trainer",)

    def __init__(self, trainer: "Trainer") -> None:
        object.__setattr__(self, "_trainer", trainer)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"`trainer.fit_loop` is a read-only view in featherlight (its loops are functions, their counters live "
            f"in `trainer.progress`); it cannot set {name!r}. Set the Trainer's flag instead, e.g. "
            "`trainer.max_epochs = 10` for `trainer.fit_loop.max_epochs = 10`."
        )


@dataclass(frozen=True)
class _Progress:
    """Lightning's ``ready``/``started``/``processed``/``completed`` counts."""

    ready: int
    started: int
    processed: int
    completed: int


@dataclass(frozen=True)
class _EpochProgress:
    current: _Progress
    total: _Progress


def _in_epoch(trainer: "Trainer") -> bool:
    return trainer.state.fn == "fit" and trainer.progress.phase is not Phase.EPOCH_START


def _batch_idx(trainer: "Trainer") -> int:
    progress = trainer.progress
    if _in_epoch(trainer):
        return progress.batch_idx
    # between epochs Lightning still reports the finished epoch's last batch, when that epoch ran to its end
    n = trainer.num_training_batches
    finished = progress.epoch > 0 and progress.batch_is_last and isinstance(n, int) and n > 0
    return n - 1 if finished else -1


def _total_batch_idx(trainer: "Trainer") -> int:
    progress = trainer.progress
    # featherlight counts a batch once its step and `on_train_batch_end` are done; Lightning from its start
    counting = _in_epoch(trainer) and progress.phase in (Phase.BATCH, Phase.ENDED)
    return progress.total_batch_idx if counting else progress.total_batch_idx - 1


class EpochLoopView(_ReadOnly):
    """``trainer.fit_loop.epoch_loop``: the counters of the current epoch's batches (see the module docstring)."""

    __slots__ = ()

    @property
    def batch_idx(self) -> int:
        return _batch_idx(self._trainer)

    @property
    def total_batch_idx(self) -> int:
        return _total_batch_idx(self._trainer)

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def _batches_that_stepped(self) -> int:
        return self._trainer.progress.batches_that_stepped

    @property
    def max_steps(self) -> int:
        return self._trainer.max_steps

    @property
    def min_steps(self) -> Optional[int]:
        return self._trainer.min_steps


class FitLoopView(_ReadOnly):
    """``trainer.fit_loop``: Lightning's fit-loop counters read from ``trainer.progress`` (see the module
    docstring for what it has). Read-only: set ``trainer.max_epochs`` and the other flags on the Trainer."""

    __slots__ = ()

    @property
    def max_epochs(self) -> Optional[int]:
        return self._trainer.max_epochs

    @property
    def min_epochs(self) -> Optional[int]:
        return self._trainer.min_epochs

    @property
    def max_steps(self) -> int:
        return self._trainer.max_steps

    @property
    def min_steps(self) -> Optional[int]:
        return self._trainer.min_steps

    @property
    def batch_idx(self) -> int:
        return _batch_idx(self._trainer)

    @property
    def total_batch_idx(self) -> int:
        return _total_batch_idx(self._trainer)

    @property
    def epoch_loop(self) -> EpochLoopView:
        return EpochLoopView(self._trainer)

    @property
    def epoch_progress(self) -> _EpochProgress:
        trainer = self._trainer
        epoch = trainer.progress.epoch
        if _in_epoch(trainer):
            processed = epoch + 1 if trainer.progress.phase is Phase.EPOCH_END else epoch
            counts = _Progress(ready=epoch + 1, started=epoch + 1, processed=processed, completed=epoch)
        else:
            counts = _Progress(ready=epoch, started=epoch, processed=epoch, completed=epoch)
        return _EpochProgress(current=counts, total=counts)

