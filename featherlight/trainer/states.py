"""What the trainer is doing: its entry point, status and running stage (Lightning's ``trainer.states``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from featherlight.utilities.enums import RunningStage, TrainerFn, TrainerStatus

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]


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
