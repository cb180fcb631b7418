"""BatchSizeFinder: find the largest batch size that fits in memory when the run starts.

The search itself lives in :mod:`featherlight.tuner.batch_size_scaling`; this callback runs it at
``on_fit_start`` (or at the start of ``validate``/``test``/``predict``) and the run continues with
the size found.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from featherlight.callbacks.callback import Callback
from featherlight.tuner.batch_size_scaling import (
    _PREFIX,
    _check_batch_size_attr,
    _check_loaders_not_given,
    _scale_batch_size,
)
from featherlight.tuner.trials import _reload_dataloaders, _warn_if_ambiguous
from featherlight.utilities.exceptions import MisconfigurationException, _TunerExitException
from featherlight.utilities.rank_zero import WarningCache

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer

_warnings = WarningCache()


class BatchSizeFinder(Callback):
    """Finds the largest batch size that runs without running out of memory, and sets it on the
    batch-size attribute (``model.batch_size``, ``model.hparams.batch_size`` or the datamodule's) before
    training. The dataloaders must be built by a ``*_dataloader()`` hook that reads that attribute.

    Args:
        mode: ``"power"`` doubles the size until a trial runs out of memory and keeps the last size that
            fit; ``"binsearch"`` then bisects between the last size that fit and the first that did not.
        steps_per_trial: optimizer steps (evaluation batches for validate/test/predict) per trial.
        init_val: the first size tried.
        max_trials: the most trials run (``0``: none, the attribute is set to ``init_val``, with a warning).
        batch_arg_name: the attribute holding the batch size.
        margin: fraction taken off the ``"binsearch"`` result as a safety buffer (``int(size * (1 - margin))``;
            default 0.05, as in Lightning).
        max_val: the largest size tried.

    The search stops at the data: a size at or above the number of samples is the last one tried.
    Subclass and override ``on_fit_start`` (calling :meth:`scale_batch_size` from another hook) to
    search at other times, e.g. at given epochs while fine-tuning.
    """

    SUPPORTED_MODES = ("power", "binsearch")
    runs_first = True

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}, got {mode!r}.")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_val", max_val)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        # 0 is accepted as in Lightning (no trial: the result is `init_val`)
        if not isinstance(max_trials, int) or isinstance(max_trials, bool) or max_trials < 0:
            raise ValueError(f"`max_trials` must be an int >= 0, got {max_trials!r}.")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"`margin` must be in [0, 1), got {margin!r}.")
        self.optimal_batch_size: Optional[int] = init_val
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val
        #: set by ``Tuner``: end the run once the search is done (the callback alone lets the fit go on)
        self.end_run_when_done = False

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: Optional[str] = None) -> None:
        if trainer.strategy.world_size > 1:
            raise MisconfigurationException("The batch size finder is not supported with distributed strategies.")
        method = stage if stage in _PREFIX else "fit"
        _check_loaders_not_given(trainer.data.given.get(_PREFIX[method]), method, self._batch_arg_name)
        if method == "fit":
            # an evaluation's loaders are checked first, when the search starts (they are loaded by then)
            _check_batch_size_attr(pl_module, self._batch_arg_name, trainer.datamodule, method)
        _warn_if_ambiguous(pl_module, self._batch_arg_name)

    def scale_batch_size(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Run the search now and set the attribute to the result (also kept in ``optimal_batch_size``)."""
        self.optimal_batch_size = _scale_batch_size(
            trainer,
            self._mode,
            self._steps_per_trial,
            self._init_val,
            self._max_trials,
            self._batch_arg_name,
            self._margin,
            self._max_val,
        )
        if self.end_run_when_done:
            fn = trainer.state.fn.value if trainer.state.fn is not None else "fit"
            if self.optimal_batch_size is not None:
                _reload_dataloaders(trainer, fn)
            raise _TunerExitException()

    def _scale_for_evaluation(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.scale_batch_size(trainer, pl_module)
        _warnings.warn(
            "`BatchSizeFinder` ran at the start of an evaluation whose dataloaders were already built: this run "
            "keeps them, the batch size found applies from the next run. Use `Tuner.scale_batch_size(..., "
            "method=...)` to tune before running."
        )

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking or trainer.state.fn != "validate":
            return
        self._scale_for_evaluation(trainer, pl_module)

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._scale_for_evaluation(trainer, pl_module)

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._scale_for_evaluation(trainer, pl_module)
