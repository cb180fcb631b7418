"""What the trainer is doing: its entry point, status and running stage, plus the loop counters."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional


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
    # batch position inside the epoch at which a mid-epoch resume continues (0: a fresh epoch)
    resume_batch_idx: int = 0
    # where inside a batch the loop is, so a checkpoint taken from any hook records a consistent position:
    # `batch_done` once the batch's optimisation ran, `pending_step` until `batches_that_stepped` counts it,
    # `epoch_finished` from the end of the batch loop until the epoch counter moves on.
    batch_done: bool = False
    pending_step: bool = False
    epoch_finished: bool = False

    def _checkpoint_state(self, trainer: Any) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batches_that_stepped": self.batches_that_stepped + int(self.pending_step),
            "batches_done": self.batch_idx + 1 if self.batch_done else self.batch_idx,
            "total_batch_idx": self.total_batch_idx + int(self.batch_done and self.pending_step),
            "epoch_finished": self.epoch_finished,
        }

    def _restore_checkpoint_state(self, checkpoint: dict[str, Any], trainer: Any) -> None:
        state = checkpoint.get("featherlight_loop")
        if state is None:  # a Lightning checkpoint: read its progress trackers where present
            fit = (checkpoint.get("loops") or {}).get("fit_loop", {})
            processed = fit.get("epoch_progress", {}).get("current", {}).get("processed")
            stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
            self.epoch = int(processed) if processed is not None else int(checkpoint.get("epoch", -1)) + 1
            self.global_step = int(checkpoint.get("global_step", 0))
            self.batches_that_stepped = int(stepped) if stepped is not None else self.global_step
            self.resume_batch_idx = 0
            return
        self.global_step = int(state["global_step"])
        self.batches_that_stepped = int(state["batches_that_stepped"])
        self.total_batch_idx = int(state["total_batch_idx"])
        if state["epoch_finished"]:
            self.epoch, self.resume_batch_idx = int(state["epoch"]) + 1, 0
        else:
            self.epoch, self.resume_batch_idx = int(state["epoch"]), int(state["batches_done"])
