"""LearningRateFinder: a learning-rate range test when the fit starts.

The search itself lives in :mod:`featherlight.tuner.lr_finder`; this callback runs it at
``on_fit_start`` and the fit continues with the suggested learning rate.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from featherlight.callbacks.callback import Callback
from featherlight.tuner.lr_finder import _lr_find, _LRFinder
from featherlight.tuner.trials import _reload_dataloaders
from featherlight.utilities.exceptions import _TunerExitException

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer


class LearningRateFinder(Callback):
    """Runs a learning-rate range test before training and sets the suggestion on ``model.lr`` /
    ``model.learning_rate`` (or ``attr_name``, in the module or its ``hparams``) and on the optimizer.

    Args:
        min_lr, max_lr: the range searched.
        num_training_steps: the number of learning rates tried (one optimizer step each).
        mode: ``"exponential"`` (default) or ``"linear"`` growth of the learning rate.
        early_stop_threshold: stop once the smoothed loss exceeds this multiple of the best one (None:
            never stop early).
        update_attr: set the suggestion on the model's attribute.
        attr_name: the attribute holding the learning rate, if not ``lr``/``learning_rate``.

    The results are in ``optimal_lr`` (an ``_LRFinder``: ``results``, ``suggestion()``, ``plot()``).
    Subclass and override ``on_fit_start`` (calling :meth:`lr_find` from another hook) to search at
    other times, e.g. at given epochs while fine-tuning.
    """

    SUPPORTED_MODES = ("linear", "exponential")
    runs_first = True

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}, got {mode!r}.")
        # 0 is accepted as in Lightning (no step, no suggestion; warned when the search runs)
        if not isinstance(num_training_steps, int) or num_training_steps < 0:
            raise ValueError(f"`num_training_steps` must be an int >= 0, got {num_training_steps!r}.")
        if mode == "exponential" and not 0 < min_lr:
            raise ValueError(f"`min_lr` must be positive in exponential mode, got {min_lr!r}.")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        #: set by ``Tuner``: end the run once the search is done (the callback alone lets the fit go on)
        self.end_run_when_done = False
        self.optimal_lr: Optional[_LRFinder] = None

    def lr_find(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Run the range test now (the RNG states are left as they were)."""
        self.optimal_lr = _lr_find(
            trainer,
            pl_module,
            min_lr=self._min_lr,
            max_lr=self._max_lr,
            num_training=self._num_training_steps,
            mode=self._mode,
            early_stop_threshold=self._early_stop_threshold,
            update_attr=self._update_attr,
            attr_name=self._attr_name,
        )
        if self.end_run_when_done:
            if self.optimal_lr is not None:
                _reload_dataloaders(trainer, "fit", validation=False)  # Lightning leaves the train loader loaded
            raise _TunerExitException()

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.lr_find(trainer, pl_module)
