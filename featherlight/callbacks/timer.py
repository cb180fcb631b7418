"""Track the time spent in each stage and stop training when a time budget is used up."""
from __future__ import annotations

import math
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.callbacks.callback import Callback
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_monotonic = time.monotonic
_INTERVALS = ("step", "epoch")
# with several processes, the ranks agree on stopping (a broadcast from rank 0) about this often
_SYNC_PERIOD_S = 1.0


def _parse_duration(duration: Union[str, timedelta, dict[str, int], None]) -> Optional[float]:
    if duration is None:
        return None
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise MisconfigurationException(
                f"`Timer(duration={duration!r})` is not a valid duration. Expected a string in the format DD:HH:MM:SS."
            )
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(duration, dict):
        duration = timedelta(**duration)
    if not isinstance(duration, timedelta):
        raise MisconfigurationException(
            f"`Timer(duration={duration!r})`: pass a 'DD:HH:MM:SS' string, a `datetime.timedelta` or a dict of "
            "`timedelta` arguments."
        )
    return duration.total_seconds()


class Timer(Callback):
    """Measure the time spent in training, validation and testing, and stop training once ``duration`` is used.

    The check costs one ``time.monotonic()`` comparison per training batch (``interval="step"``) or per
    epoch (``interval="epoch"``). With several processes, rank 0's decision is broadcast so all ranks
    stop together; to keep that cheap the ranks synchronise about once a second rather than every batch.

    The training time already spent is saved in checkpoints (``state_dict``) and counts towards the
    budget when training resumes.

    Args:
        duration: the budget: a ``"DD:HH:MM:SS"`` string, a :class:`datetime.timedelta`, or a dict of
            ``timedelta`` arguments such as ``dict(hours=2)``. ``None`` only measures.
        interval: ``"step"`` stops mid-epoch, after the batch that used up the budget; ``"epoch"`` stops
            at the end of the epoch.
        verbose: log a message when the time is up.

    Example::

        timer = Timer(duration="00:12:00:00")
        trainer = Trainer(callbacks=[timer])
        trainer.fit(model)
        timer.time_elapsed("train")
    """

    def __init__(
        self,
        duration: Optional[Union[str, timedelta, dict[str, int]]] = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self._duration = _parse_duration(duration)
        if interval not in _INTERVALS:
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval})`. Possible choices are: "
                f"{', '.join(_INTERVALS)}"
            )
        self._interval = str(interval)
        self._verbose = verbose
        self._start_time: dict[RunningStage, Optional[float]] = dict.fromkeys(RunningStage)
        self._end_time: dict[RunningStage, Optional[float]] = dict.fromkeys(RunningStage)
        self._offset = 0.0
        # when the training time passes this monotonic instant the budget is spent (inf: no budget)
        self._deadline = math.inf
        self._distributed = False
        self._check_steps = False
        self._batches = 0
        self._next_sync = 0

    # ------------------------------------------------------------------ queries
    def start_time(self, stage: str = RunningStage.TRAINING) -> Optional[float]:
        """When ``stage`` started (``time.monotonic()`` seconds), or None."""
        return self._start_time[RunningStage(stage)]

    def end_time(self, stage: str = RunningStage.TRAINING) -> Optional[float]:
        """When ``stage`` ended (``time.monotonic()`` seconds), or None."""
        return self._end_time[RunningStage(stage)]

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        """Seconds spent in ``stage`` (for training, including the time restored from a checkpoint)."""
        stage = RunningStage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == RunningStage.TRAINING else 0.0
        if start is None:
            return offset
        if end is None:
            return _monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = RunningStage.TRAINING) -> Optional[float]:
        """Seconds left of ``duration`` for ``stage`` (None without a duration)."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    # ------------------------------------------------------------------ stage boundaries
    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        now = _monotonic()
        self._start_time[RunningStage.TRAINING] = now
        self._end_time[RunningStage.TRAINING] = None
        self._deadline = now + self._duration - self._offset if self._duration is not None else math.inf
        self._distributed = getattr(trainer, "world_size", 1) > 1
        self._check_steps = self._duration is not None and self._interval == "step"
        self._batches = 0
        self._next_sync = 0

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_time[RunningStage.TRAINING] = _monotonic()

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start_time[RunningStage.VALIDATING] = _monotonic()
        self._end_time[RunningStage.VALIDATING] = None

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_time[RunningStage.VALIDATING] = _monotonic()

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start_time[RunningStage.TESTING] = _monotonic()
        self._end_time[RunningStage.TESTING] = None

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_time[RunningStage.TESTING] = _monotonic()

    # ------------------------------------------------------------------ the budget
    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._duration is None:
            return
        # a resumed run may already have used its whole budget
        self._distributed = getattr(trainer, "world_size", 1) > 1
        self._decide(trainer, self.time_elapsed() >= self._duration)

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, Timer)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._check_steps:
            return
        if not self._distributed:
            if _monotonic() >= self._deadline:
                self._decide(trainer, True)
            return
        # all ranks count the same batches, so they meet in the broadcast at the same batch
        self._batches += 1
        if self._batches >= self._next_sync:
            self._sync(trainer)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._interval != "epoch" or self._duration is None:
            return
        self._decide(trainer, _monotonic() >= self._deadline)

    def _sync(self, trainer: "Trainer") -> None:
        """Distributed, interval="step": agree on stopping, and on the batch of the next check.

        Rank 0 picks the next check so that it comes about ``_SYNC_PERIOD_S`` later at the current
        pace, and never after the deadline would be reached at that pace.
        """
        now = _monotonic()
        stop = now >= self._deadline
        start = self._start_time[RunningStage.TRAINING] or now
        per_batch = (now - start) / max(self._batches, 1)
        horizon = min(_SYNC_PERIOD_S, max(self._deadline - now, 0.0))
        ahead = max(1, int(horizon / per_batch)) if per_batch > 0 and math.isfinite(horizon) else 1
        stop, ahead = trainer.strategy.broadcast((stop, ahead))
        self._next_sync = self._batches + ahead
        if stop:
            self._decide(trainer, True, broadcast=False)

    def _decide(self, trainer: "Trainer", stop: bool, broadcast: bool = True) -> None:
        if broadcast and self._distributed:
            stop = trainer.strategy.broadcast(stop)
        if not stop:
            return
        trainer.should_stop = True
        if self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed(RunningStage.TRAINING)))
            rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
        self._deadline = math.inf  # say it once

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in RunningStage}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        elapsed = state_dict.get("time_elapsed", {})
        self._offset = float(elapsed.get(RunningStage.TRAINING.value, 0.0))
