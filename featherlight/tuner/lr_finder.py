"""Learning-rate range test: train a few steps while the learning rate grows, and watch the loss.

The learning rate of step ``k`` (of ``num_training``) is ``min_lr`` for the first step, then
``min_lr * (max_lr / min_lr) ** ((k + 1) / num_training)`` (``"exponential"``) or
``min_lr + (k + 1) / num_training * (max_lr - min_lr)`` (``"linear"``), so the last step uses
``max_lr`` — the sequence Lightning's finder produces. The loss of each step is smoothed with an
exponential moving average (``beta=0.98``, bias-corrected with the step count as Lightning does) and
the search stops early once it exceeds ``early_stop_threshold`` times the best smoothed loss seen
(or stops being finite). :meth:`_LRFinder.suggestion` picks the learning rate where the loss falls
fastest.

The search runs inside the trainer's fit at ``on_fit_start`` (see :mod:`featherlight.tuner.trials`):
the user's optimizer is used with its learning rate set per step, the user's schedulers are not
stepped, and everything (weights, optimizer state, trainer state, RNG) is put back afterwards.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from featherlight.callbacks.callback import Callback
from featherlight.tuner.trials import _has_attr, _run_fit_trial, _set_attr, _trial_flags, _TrialSandbox
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer

_LR_ATTRS = ("lr", "learning_rate")


def _determine_lr_attr_name(model: "LightningModule", attr_name: str = "") -> str:
    if attr_name:
        if not _has_attr(model, attr_name):
            raise AttributeError(
                f"The attribute name for the learning rate was set to {attr_name}, but could not find this as a field "
                "in `model` or `model.hparams`. Set it on the module (e.g. `self.lr = 1e-3` in `__init__`) or pass the "
                "name of your attribute."
            )
        return attr_name
    for name in _LR_ATTRS:
        if _has_attr(model, name):
            return name
    raise AttributeError(
        "When using the learning rate finder, either `model` or `model.hparams` should have one of these fields: "
        f"{_LR_ATTRS}. If your model has a different name for the learning rate, set it with "
        "`.lr_find(attr_name=...)`, or pass `update_attr=False` to only get the suggestion."
    )


class _LRFinder:
    """The results of a learning-rate range test.

    Attributes:
        results: ``{"lr": [...], "loss": [...]}``, one entry per optimizer step (the loss smoothed).

    Args:
        mode: ``"exponential"`` or ``"linear"`` growth of the learning rate.
        lr_min, lr_max: the range searched.
        num_training: the number of steps (learning rates) tried.
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in ("linear", "exponential"):
            raise ValueError(f"`mode` should be either 'linear' or 'exponential', got {mode!r}.")
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, Any] = {}
        self._total_batch_idx = 0
        self._optimal_idx: Optional[int] = None

    def _lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if step <= 0:
            return self.lr_min
        r = min(step + 1, self.num_training) / self.num_training
        if self.mode == "linear":
            return self.lr_min + r * (self.lr_max - self.lr_min)
        return self.lr_min * (self.lr_max / self.lr_min) ** r

    def plot(self, suggest: bool = False, show: bool = False, ax: Optional[Any] = None) -> Optional[Any]:
        """Plot the loss against the learning rate (log scale in exponential mode).

        Args:
            suggest: mark the suggested learning rate with a red dot.
            show: call ``plt.show()``.
            ax: a matplotlib ``Axes`` to draw on; a new figure is created when None.

        Returns:
            The matplotlib figure.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise MisconfigurationException(
                "`_LRFinder.plot()` needs matplotlib, which is not installed: `pip install matplotlib`."
            ) from err
        lrs = self.results.get("lr", [])
        losses = self.results.get("loss", [])
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx is not None:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> Optional[float]:
        """The learning rate where the loss falls fastest (the most negative gradient of the loss curve).

        Args:
            skip_begin: points ignored at the start (too early to tell).
            skip_end: points ignored at the end (often already diverging).

        Returns:
            The learning rate, or None (with a warning) when fewer than two finite points remain.
        """
        losses_all = list(self.results.get("loss", []))
        lrs_all = list(self.results.get("lr", []))
        end = len(losses_all) - skip_end if skip_end > 0 else len(losses_all)
        candidates = [i for i in range(max(skip_begin, 0), end) if math.isfinite(losses_all[i])]
        if len(candidates) < 2:
            rank_zero_warn(
                "Failed to compute suggestion for learning rate because there are not enough points. Increase the "
                "loop iteration limits (`num_training`) or the size of your dataset/dataloader."
            )
            self._optimal_idx = None
            return None
        losses = torch.tensor([losses_all[i] for i in candidates])
        lrs = torch.tensor([lrs_all[i] for i in candidates])
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        self._optimal_idx = candidates[int(torch.argmin(gradients).item())]
        return lrs_all[self._optimal_idx]


class _LRRecorder(Callback):
    """Sets each step's learning rate and records it with the smoothed loss; stops on divergence."""

    def __init__(self, finder: _LRFinder, early_stop_threshold: Optional[float], beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self._recorded_step = 0
        self._finite_points = 0
        self._lr = finder.lr_min

    def on_train_batch_start(self, trainer: "Trainer", pl_module: Any, batch: Any, batch_idx: int) -> None:
        lr = self.finder._lr_at(trainer.global_step)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        self._lr = lr

    def on_train_batch_end(self, trainer: "Trainer", pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step <= self._recorded_step:
            return  # inside an accumulation window: no optimizer step yet
        self._recorded_step = step
        self.lrs.append(self._lr)
        loss = _loss_value(outputs)
        if loss is None:
            # a skipped batch: keep the lists aligned; non-finite points are ignored by `suggestion`
            self.losses.append(float("nan"))
            return
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * loss
        smoothed = self.avg_loss / (1 - self.beta ** (step + 1))
        first = self._finite_points == 0
        if not first and (
            not math.isfinite(smoothed)
            or (self.early_stop_threshold is not None and smoothed > self.early_stop_threshold * self.best_loss)
        ):
            trainer.should_stop = True
        trainer.should_stop = trainer.strategy.broadcast(trainer.should_stop)
        if first or smoothed < self.best_loss:
            self.best_loss = smoothed
        self._finite_points += 1
        self.losses.append(smoothed)


def _loss_value(outputs: Any) -> Optional[float]:
    loss = outputs
    if isinstance(outputs, dict):
        loss = outputs.get("loss")
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().item())
    if isinstance(loss, (int, float)):
        return float(loss)
    return None


def _lr_find(
    trainer: "Trainer",
    model: "LightningModule",
    min_lr: float = 1e-8,
    max_lr: float = 1,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: Optional[float] = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
) -> Optional[_LRFinder]:
    """Run the range test inside the trainer's running fit; optionally set the suggestion on the model."""
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    if update_attr:
        attr_name = _determine_lr_attr_name(model, attr_name)
    if len(trainer.optimizers) != 1:
        raise MisconfigurationException(
            f"`model.configure_optimizers()` returned {len(trainer.optimizers)}, but learning rate finder only works "
            "with single optimizer. Return the one optimizer to tune from `configure_optimizers` while searching."
        )
    if num_training < 0:
        raise ValueError(f"`num_training` must be a number of steps >= 0, got {num_training}.")
    finder = _LRFinder(mode, min_lr, max_lr, num_training)
    if num_training == 0:
        # Lightning runs no step either: empty results, and no suggestion
        rank_zero_warn("`num_training=0`: the learning rate finder runs no step; there is nothing to suggest.")
        return finder
    recorder = _LRRecorder(finder, early_stop_threshold)
    with _TrialSandbox(trainer, [recorder], _trial_flags(trainer, num_training)) as sandbox:
        sandbox.begin_trial()
        _run_fit_trial(trainer)
        steps = trainer.global_step
        finder._total_batch_idx = trainer.progress.total_batch_idx
    if steps < num_training:
        rank_zero_info(f"LR finder stopped early after {steps} steps due to diverging loss.")
    finder.results = trainer.strategy.broadcast({"lr": recorder.lrs, "loss": recorder.losses})
    if update_attr:
        lr = finder.suggestion()
        if lr is not None:
            _set_attr(model, attr_name, lr)
            # the run that continues uses the suggestion too
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            rank_zero_info(f"Learning rate set to {lr}")
    return finder
