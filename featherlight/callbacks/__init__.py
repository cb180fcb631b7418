"""Callbacks: the :class:`Callback` base and the built-in callbacks (Lightning's names and behaviour).

The built-in callbacks are imported on first access (``from featherlight.callbacks import Timer``), so
that ``import featherlight`` pays only for the ones a program uses.
"""
from typing import TYPE_CHECKING, Any

from featherlight.callbacks.callback import Callback

_LAZY = {
    "BackboneFinetuning": "featherlight.callbacks.finetuning",
    "BaseFinetuning": "featherlight.callbacks.finetuning",
    "BasePredictionWriter": "featherlight.callbacks.prediction_writer",
    "BatchSizeFinder": "featherlight.callbacks.batch_size_finder",
    "LearningRateFinder": "featherlight.callbacks.lr_finder",
    "Checkpoint": "featherlight.callbacks.checkpoint",
    "DeviceStatsMonitor": "featherlight.callbacks.device_stats_monitor",
    "EMAWeightAveraging": "featherlight.callbacks.weight_averaging",
    "EarlyStopping": "featherlight.callbacks.early_stopping",
    "GradientAccumulationScheduler": "featherlight.callbacks.gradient_accumulation_scheduler",
    "LambdaCallback": "featherlight.callbacks.lambda_function",
    "LearningRateMonitor": "featherlight.callbacks.lr_monitor",
    "ModelCheckpoint": "featherlight.callbacks.model_checkpoint",
    "ModelSummary": "featherlight.callbacks.model_summary",
    "OnExceptionCheckpoint": "featherlight.callbacks.on_exception_checkpoint",
    "ProgressBar": "featherlight.callbacks.progress.progress_bar",
    "RichModelSummary": "featherlight.callbacks.rich_model_summary",
    "RichProgressBar": "featherlight.callbacks.progress.rich_progress",
    "StochasticWeightAveraging": "featherlight.callbacks.stochastic_weight_avg",
    "TQDMProgressBar": "featherlight.callbacks.progress.tqdm_progress",
    "Timer": "featherlight.callbacks.timer",
    "WeightAveraging": "featherlight.callbacks.weight_averaging",
}

__all__ = ["Callback", *sorted(_LAZY)]

if TYPE_CHECKING:
    from featherlight.callbacks.checkpoint import Checkpoint
    from featherlight.callbacks.device_stats_monitor import DeviceStatsMonitor
    from featherlight.callbacks.early_stopping import EarlyStopping
    from featherlight.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
    from featherlight.callbacks.lambda_function import LambdaCallback
    from featherlight.callbacks.lr_monitor import LearningRateMonitor
    from featherlight.callbacks.model_checkpoint import ModelCheckpoint
    from featherlight.callbacks.model_summary import ModelSummary
    from featherlight.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
    from featherlight.callbacks.prediction_writer import BasePredictionWriter
    from featherlight.callbacks.progress import ProgressBar, RichProgressBar, TQDMProgressBar
    from featherlight.callbacks.rich_model_summary import RichModelSummary
    from featherlight.callbacks.timer import Timer


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        # a submodule reached as an attribute (`featherlight.callbacks.early_stopping.EarlyStopping`)
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the submodule exists but needs a package that is missing
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
