"""Where the fit loop is: its counters and its phase, in one small object (``trainer.progress``).

The fit loop owns and updates it; checkpoints save it (``featherlight_loop``) and a resumed run continues from
it. Everything else reads it: ``trainer.current_epoch`` and ``trainer.global_step`` are views of it, the
learning-rate monitor reads ``batches_that_stepped``, the tuner swaps in a fresh one for its trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional


class Phase(str, Enum):
    """Where the fit loop is inside an epoch, so a checkpoint taken from any hook resumes exactly there.

    A batch goes ``BATCH`` (its optimisation) -> ``ENDED`` (``on_train_batch_end`` onwards) -> ``VALIDATING``
    (a validation run it triggers, if due) -> ``VALIDATED`` -> ``DONE``; ``EPOCH_END`` covers
    ``on_train_epoch_end``; ``EPOCH_START`` is the boundary between epochs (and before the first).
    Saved in checkpoints as its string value.
    """

    EPOCH_START = "epoch_start"
    BATCH = "batch"
    ENDED = "ended"
    VALIDATING = "validating"
    VALIDATED = "validated"
    DONE = "done"
    EPOCH_END = "epoch_end"

    @property
    def mid_epoch(self) -> bool:
        """Whether a checkpoint at this phase needs the position inside the epoch to resume."""
        return self is not Phase.EPOCH_START


# the counters a checkpoint stores (and a resume reads back) as plain ints
_COUNTERS = ("epoch", "global_step", "batches_that_stepped", "total_batch_idx", "batch_idx")


@dataclass
class LoopState:
    """Every counter of the fit loop, and where it is.

    ``global_step`` counts optimizer steps (every optimizer's), ``batches_that_stepped`` counts training
    batches that ended an accumulation window (the step loggers see), ``batch_idx`` is the position inside
    the current epoch and ``total_batch_idx`` counts training batches over all epochs. ``batch_stepped`` and
    ``batch_is_last`` describe the current batch once its step is done; ``last_step_skipped`` is True when
    GradScaler skipped the latest optimizer step (inf/nan gradients), so step-interval schedulers hold.
    """

    epoch: int = 0
    global_step: int = 0
    batches_that_stepped: int = 0
    batch_idx: int = 0
    total_batch_idx: int = 0
    phase: Phase = Phase.EPOCH_START
    batch_stepped: bool = False
    batch_is_last: bool = False
    last_step_skipped: bool = False
    # RNG states when the current epoch's data order was drawn (a mid-epoch resume redraws it from them), and
    # when the current validation began (an interrupted validation reruns from them)
    epoch_start_rng: Optional[dict] = None
    val_start_rng: Optional[dict] = None
    # a mid-epoch position read from a checkpoint (``resume.ResumePoint``); the fit loop consumes it
    resume: Any = None
    # the plateau schedulers' monitors as they were when the resumed epoch's checkpoint was taken: their step at
    # that epoch's end uses them (the values were logged before the interruption, not in this run)
    resumed_monitors: Optional[dict] = None

    def counters(self) -> dict[str, Any]:
        """The counters and the position, as a checkpoint stores them."""
        state: dict[str, Any] = {key: getattr(self, key) for key in _COUNTERS}
        state.update(phase=Phase(self.phase).value, batch_stepped=self.batch_stepped,
                     batch_is_last=self.batch_is_last)
        return state

    def load_counters(self, state: dict[str, Any]) -> None:
        """Set the counters and the phase from :meth:`counters`' output (the rest of a position is resume's)."""
        for key in _COUNTERS:
            setattr(self, key, int(state[key]))
        self.phase = Phase(state["phase"])
        self.batch_stepped = bool(state.get("batch_stepped", False))
        self.batch_is_last = bool(state.get("batch_is_last", False))

    def copy_from(self, other: "LoopState") -> None:
        """Take every field of ``other`` (rank zero's state brought back from a spawned process)."""
        for key in self.__dataclass_fields__:
            setattr(self, key, getattr(other, key))
