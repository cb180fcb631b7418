"""String enums for what the trainer is doing: its status, the entry point that runs, the loop that runs.

They compare equal to their string values (``TrainerFn.FITTING == "fit"``), so callbacks can test either.
``featherlight.trainer.states`` re-exports them at Lightning's path.
"""
from __future__ import annotations

from enum import Enum
from typing import Optional


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


LightningEnum = _StrEnum


class GradClipAlgorithmType(_StrEnum):
    """``Trainer(gradient_clip_algorithm=...)``: ``"norm"`` clips the norm of all gradients together, ``"value"`` each
    gradient element."""

    VALUE = "value"
    NORM = "norm"

    @staticmethod
    def supported_type(val: str) -> bool:
        return any(member.value == val for member in GradClipAlgorithmType)

    @staticmethod
    def supported_types() -> list[str]:
        return [member.value for member in GradClipAlgorithmType]
