"""What the trainer is doing: its entry point, status and running stage, plus the loop counters."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional


class _StopRun(Exception):
    """Raised by a callback to end the current run early but cleanly: teardown hooks run, the status
    is FINISHED and the entry point returns (the tuner's finders use it once their search is done)."""


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.value.lower() == other.lower()
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.value.lower())


class TrainerStatus(_StrEnum):
    """Status of the trainer's current run."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (self.FINISHED, self.INTERRUPTED)


class TrainerFn(_StrEnum):
    """The user-facing entry point that is running."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(_StrEnum):
    """The loop that is running; differs from :class:`TrainerFn` during fit (train, sanity check, validate)."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (self.VALIDATING, self.TESTING, self.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> Optional[str]:
        if self in (self.VALIDATING, self.SANITY_CHECKING):
            return "val"
        return self.value


@dataclass
class TrainerState:
    """The trainer's entry point, status and stage."""

    status: TrainerStatus = TrainerStatus.INITIALIZING
    fn: Optional[TrainerFn] = None
    stage: Optional[RunningStage] = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped


@dataclass
class LoopState:
    """Every counter of the loops, in one place. Saved in checkpoints and restored on resume.

    ``global_step`` counts optimizer steps (all optimizers), ``batches_that_stepped`` counts training
    batches that ended an accumulation window (the step used for logging), ``batch_idx`` is the
    position inside the current epoch and ``total_batch_idx`` counts training batches over all epochs.
    """

    epoch: int = 0
    global_step: int = 0
    batches_that_stepped: int = 0
    batch_idx: int = 0
    total_batch_idx: int = 0
    # where the loop is (see fit_loop.run_fit) and what the current batch did
    phase: str = "epoch_start"
    batch_stepped: bool = False
    batch_is_last: bool = False
    # RNG states when the current epoch's data order was drawn (a mid-epoch resume redraws it from them)
    epoch_start_rng: Optional[dict] = None
    val_start_rng: Optional[dict] = None

    def _checkpoint_state(self, trainer: Any) -> dict[str, Any]:
        """The counters and the exact position; the resume module adds the epoch's data and values."""
        from featherlight.trainer.resume import _position_state

        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batches_that_stepped": self.batches_that_stepped,
            "total_batch_idx": self.total_batch_idx,
            "batch_idx": self.batch_idx,
            "phase": self.phase,
            "batch_stepped": self.batch_stepped,
            "batch_is_last": self.batch_is_last,
        }
        state.update(_position_state(trainer))
        return state

    def _restore_checkpoint_state(self, checkpoint: dict[str, Any], trainer: Any) -> None:
        from featherlight.trainer.resume import _ResumePoint

        state = checkpoint.get("featherlight_loop")
        if state is None:  # a Lightning checkpoint: read its progress trackers where present
            fit = (checkpoint.get("loops") or {}).get("fit_loop", {})
            processed = fit.get("epoch_progress", {}).get("current", {}).get("processed")
            stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
            self.epoch = int(processed) if processed is not None else int(checkpoint.get("epoch", -1)) + 1
            self.global_step = int(checkpoint.get("global_step", 0))
            self.batches_that_stepped = int(stepped) if stepped is not None else self.global_step
            return
        for key in ("epoch", "global_step", "batches_that_stepped", "total_batch_idx", "batch_idx"):
            setattr(self, key, int(state[key]))
        self.phase = state["phase"]
        if self.phase != "epoch_start":  # mid-epoch: the fit loop continues from the exact position
            trainer._resume = _ResumePoint(state)
