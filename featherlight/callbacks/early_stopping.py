"""EarlyStopping: stop training when a monitored metric stops improving (or crosses a threshold)."""
from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_prefixed_message, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

log = logging.getLogger(__name__)


class EarlyStoppingReason(Enum):
    """Why :class:`EarlyStopping` stopped the run (``NOT_STOPPED`` while it has not)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    r"""Stop ``fit`` when ``monitor`` has not improved for ``patience`` checks.

    Args:
        monitor: the logged metric to watch.
        min_delta: an improvement must be larger than this (an absolute change of ``min_delta`` or less counts
            as no improvement). Stored with the sign of the comparison: negative for ``mode="min"``.
        patience: number of checks without improvement after which training stops. One check happens per
            training epoch by default (or per validation run, see ``check_on_train_epoch_end``).
        verbose: log each improvement and the reason for stopping.
        mode: ``"min"``: stop when the metric stops decreasing; ``"max"``: when it stops increasing.
        strict: raise when ``monitor`` is not among the logged metrics (otherwise the check is skipped).
        check_finite: stop as soon as the metric is NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_on_train_epoch_end: check at the end of the training epoch (``True``) or at the end of validation
            (``False``). ``None``: at the end of the training epoch when validation runs once at the end of
            every epoch (or never), otherwise after each validation.
        log_rank_zero_only: with several processes, log the messages on rank 0 only.

    The checks run in this order; the first that applies decides: non-finite value (``check_finite``), stopping
    threshold, divergence threshold, improvement (resets ``wait_count``), else ``wait_count += 1`` and stop once
    it reaches ``patience``. When any process decides to stop, all stop (``trainer.should_stop``; the trainer still
    honours ``min_epochs``/``min_steps``). ``stopped_epoch``, ``stopping_reason`` and ``stopping_reason_message``
    tell what happened. Nothing is checked during the sanity check, outside ``fit``, or with ``fast_dev_run``.

    Difference from Lightning: the texts of ``stopping_reason_message`` and of the log lines are worded
    differently (same facts, and the ``strict`` error starts the same way).
    """

    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}
    monitors_metrics = True

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: Optional[float] = None,
        divergence_threshold: Optional[float] = None,
        check_on_train_epoch_end: Optional[bool] = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: Optional[str] = None

        if mode not in self.mode_dict:
            raise MisconfigurationException(f"`mode` can be {', '.join(self.mode_dict)}, got {mode}")
        # signed so that `current - min_delta` is what must beat the best score, whatever the mode
        self.min_delta = min_delta if mode == "max" else -min_delta
        self.best_score = torch.tensor(float("inf") if mode == "min" else float("-inf"))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Callable:
        return self.mode_dict[self.mode]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # validation exactly once per epoch (at its end), or never: its metrics are there at train epoch end
            self._check_on_train_epoch_end = (
                trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
            )

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._check_on_train_epoch_end and not self._should_skip_check(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not self._check_on_train_epoch_end and not self._should_skip_check(trainer):
            self._run_early_stopping_check(trainer)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # ------------------------------------------------------------------ the check
    def _should_skip_check(self, trainer: "Trainer") -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking

    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        available = ", ".join(f"`{k}`" for k in logs) or "(none)"
        message = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available. Log it with "
            f"`self.log({self.monitor!r}, value)` or monitor one of the available metrics: {available}"
        )
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            rank_zero_warn(message, category=RuntimeWarning)
        return False

    def _run_early_stopping_check(self, trainer: "Trainer") -> None:
        """Evaluate the stopping criteria on the current value and tell the trainer whether to stop."""
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = logs[self.monitor]
        current = (current if isinstance(current, Tensor) else torch.tensor(float(current))).squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        # one process deciding to stop stops them all
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, Optional[str]]:
        op = self.monitor_op
        symbol = self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite (best so far: {self.best_score:.3f}); "
                "stopping the run."
            )
        if self.stopping_threshold is not None and op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (
                f"Stopping threshold reached: {self.monitor} = {current} {symbol} {self.stopping_threshold}; "
                "stopping the run."
            )
        if self.divergence_threshold is not None and op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (
                f"Divergence threshold reached: {self.monitor} = {current} {symbol} {self.divergence_threshold}; "
                "stopping the run."
            )
        if op(current - self.min_delta, self.best_score.to(current.device)):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records (best "
                f"score {self.best_score:.3f}); stopping the run."
            )
        return False, None

    def _improvement_message(self, current: Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} (min_delta "
                f"{abs(self.min_delta)}); new best score {current:.3f}"
            )
        return f"Metric {self.monitor} improved; new best score {current:.3f}"

    @staticmethod
    def _log_info(trainer: "Trainer", message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(rank_prefixed_message(message, rank))
