"""Change the number of batches whose gradients are accumulated before each optimizer step, per epoch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule


class GradientAccumulationScheduler(Callback):
    """Set ``trainer.accumulate_grad_batches`` at the start of every training epoch from a schedule.

    Args:
        scheduling: ``{epoch: factor}``. Epochs are zero-based: from epoch ``e`` on (until the next key),
            gradients of ``factor`` batches are accumulated before each optimizer step. Epochs before the
            smallest key use a factor of 1.

    Example::

        # no accumulation in epochs 0-3, 2 batches per step in epochs 4-7, 4 from epoch 8 on
        trainer = Trainer(callbacks=[GradientAccumulationScheduler({4: 2, 8: 4})])

    As with ``Trainer(accumulate_grad_batches=k)``, each batch's loss is divided by the epoch's factor and
    the last batch of an epoch always steps (a shorter last window). Only automatic optimization is
    supported, and the Trainer's own ``accumulate_grad_batches`` must be left at 1.
    ``trainer.estimated_stepping_batches`` is computed from the Trainer's factor (1), not from the schedule.
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        super().__init__()
        if not scheduling:
            raise TypeError("`GradientAccumulationScheduler(scheduling=...)` needs a non-empty {epoch: factor} dict.")
        keys = list(scheduling.keys())
        values = list(scheduling.values())
        if any(not _is_int(k) or k < 0 for k in keys):
            raise MisconfigurationException(
                f"The epochs (keys) of `scheduling` must be ints >= 0 (zero-based epochs); got {keys}."
            )
        if any(not _is_int(v) or v < 1 for v in values):
            raise MisconfigurationException(
                f"The accumulation factors (values) of `scheduling` must be ints >= 1; got {values}."
            )
        schedule = dict(scheduling)  # the caller's dict is left as it was
        schedule.setdefault(0, 1)
        self.scheduling: dict[int, int] = schedule
        self.epochs: list[int] = sorted(schedule)
        # the factor this callback last put on the trainer: a later fit on the same Trainer finds it there
        self._applied: Optional[int] = None

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any epoch of the schedule accumulates (a factor above 1)."""
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor for zero-based ``epoch``: the value of the largest key not above it."""
        factor = 1
        for start in self.epochs:
            if start > epoch:
                break
            factor = self.scheduling[start]
        return factor

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "`GradientAccumulationScheduler` needs automatic optimization: with manual optimization you step "
                "the optimizers yourself, so there is nothing to accumulate automatically. Remove the callback or "
                "switch to automatic optimization."
            )

        overrides = any(is_overridden(hook, pl_module) for hook in ("optimizer_step", "optimizer_zero_grad"))
        if overrides and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                "`GradientAccumulationScheduler` accumulates gradients and the LightningModule overrides "
                "`optimizer_step` or `optimizer_zero_grad`: those hooks run once per optimizer step, not once "
                "per batch."
            )
        current = trainer.accumulate_grad_batches
        if current != 1 and current != self._applied:
            raise ValueError(
                f"`Trainer(accumulate_grad_batches={current})` cannot be combined with the "
                "`GradientAccumulationScheduler` callback, which sets that value every epoch. Remove one of the two."
            )

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        factor = self.get_accumulate_grad_batches(trainer.current_epoch)
        trainer.accumulate_grad_batches = factor
        self._applied = factor


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
