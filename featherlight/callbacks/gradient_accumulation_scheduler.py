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
                f"Epoch should be an int greater than or equal to 0. Got {keys}. The keys of `scheduling` are "
                "zero-based epochs."
            )
        if any(not _is_int(v) or v < 1 for v in values):
            raise MisconfigurationException(
                f"Accumulation factor should be an int greater than 0. Got {values}. The values of `scheduling` are "
                "the number of batches accumulated per optimizer step (1: none)."
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
                "Automatic gradient accumulation and the `GradientAccumulationScheduler` is not supported for manual "
                "optimization. Please remove the callback or switch to automatic optimization. (With manual "
                "optimization you step the optimizers yourself: accumulate by stepping every few batches.)"
            )

        overrides = any(is_overridden(hook, pl_module) for hook in ("optimizer_step", "optimizer_zero_grad"))
        if overrides and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding "
                "`LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch "
                "(rather, they are called on every optimization step)."
            )
        current = trainer.accumulate_grad_batches
        if current != 1 and current != self._applied:
            raise ValueError(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler` callback. "
                f"Either remove `accumulate_grad_batches` from the Trainer (it is {current}) or remove the callback, "
                "which sets that value every epoch."
            )

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        factor = self.get_accumulate_grad_batches(trainer.current_epoch)
        trainer.accumulate_grad_batches = factor
        self._applied = factor


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
