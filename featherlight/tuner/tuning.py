"""The Tuner: find the largest batch size that fits, or a good initial learning rate, before training.

How the searches run
--------------------
Both searches are callbacks (:class:`~featherlight.callbacks.BatchSizeFinder`,
:class:`~featherlight.callbacks.LearningRateFinder`) that run at ``on_fit_start`` (or at the start of
validate/test/predict for the batch size), as Lightning's do: by then the run has called
``prepare_data``/``setup``/``configure_model``/``configure_optimizers`` and moved the module to its
device, so a trial is just the trainer's own loop (``fit_loop.run_fit`` or the evaluation loop) run
for a few steps. :class:`Tuner` adds such a callback for one call, runs ``trainer.fit`` (or
``validate``/``test``/``predict``) and has the callback end that run as soon as the search is over;
the run is then torn down like a finished one (``teardown`` hooks), not like a failed one. As in
Lightning, the module, the datamodule and that entry point's dataloaders (built with the tuned value)
stay attached to the trainer afterwards.

We chose this over a fresh internal ``Trainer`` per trial because that would call the user's
``prepare_data``/``setup``/``configure_model`` once per trial (downloads, dataset loading), and
because the callback form has to run inside the user's own fit anyway.

Trials and how the trainer is put back after them: see :mod:`featherlight.tuner.trials`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

import torch

from featherlight.core.datamodule import LightningDataModule
from featherlight.tuner.batch_size_finder import BatchSizeFinder
from featherlight.tuner.batch_size_scaling import _check_loaders_not_given
from featherlight.tuner.learning_rate_finder import LearningRateFinder
from featherlight.tuner.lr_finder import _LRFinder
from featherlight.tuner.trials import _Preserved, quiet_trainer
from featherlight.utilities.exceptions import MisconfigurationException, _TunerExitException

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.trainer.trainer import Trainer

_METHODS = ("fit", "validate", "test", "predict")


class Tuner:
    """Tune a model's batch size and learning rate with the trainer's own loop.

    Example::

        trainer = Trainer(max_epochs=3)
        tuner = Tuner(trainer)
        tuner.scale_batch_size(model)  # sets model.batch_size (or hparams/datamodule) to the largest that fits
        lr_finder = tuner.lr_find(model)  # sets model.lr / model.learning_rate to the suggestion
        trainer.fit(model)

    Each call leaves the trainer's flags, callbacks, loggers, counters and metrics, the module's weights and
    the RNG states as they were; the tuned attribute changes, and the module, the datamodule and the dataloaders
    of the tuned entry point (built with the new value) are attached to the trainer, as after a Lightning tuner
    call.
    """

    def __init__(self, trainer: "Trainer") -> None:
        self._trainer = trainer

    def scale_batch_size(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> Optional[int]:
        """Find the largest batch size that runs ``steps_per_trial`` steps without running out of memory.

        Args:
            model: the module to tune. Its dataloaders must be built by a ``*_dataloader()`` hook (of the
                module or the datamodule) that reads the batch-size attribute.
            train_dataloaders, val_dataloaders, dataloaders, datamodule: as for ``trainer.fit`` (or the
                ``method``'s entry point). Loaders passed directly cannot be resized: refused for ``fit``, searched
                as they are (with a warning) for the other methods, as in Lightning.
            method: the loop to size the batch for: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
            mode: ``"power"`` doubles the size until a trial runs out of memory and keeps the last one that
                fit; ``"binsearch"`` doubles the same way, then bisects between the last size that fit and
                the first that did not.
            steps_per_trial: optimizer steps (or evaluation batches) each trial runs.
            init_val: the first size tried.
            max_trials: the most trials run (``0``: none; the attribute is set to ``init_val``, with a warning).
            batch_arg_name: the attribute holding the batch size, looked up on ``model``, ``model.hparams``,
                the datamodule and ``datamodule.hparams`` (all the holders found are updated).
            margin: fraction taken off the ``"binsearch"`` result as a safety buffer: ``int(size * (1 - margin))``
                (default 0.05, as in Lightning; 0 returns the largest size that ran).
            max_val: the largest size tried.

        The search never goes beyond the dataset: a size at or above the number of samples is the last
        one tried, and the result is capped at the dataset length.

        Returns:
            The batch size found (also set on the attribute), or None when ``fast_dev_run`` is on.
        """
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        _check_scale_batch_size_configuration(self._trainer)
        if method == "fit":
            # before any hook runs (the finder's `setup` checks the attribute, and evaluation loaders when loaded)
            _check_loaders_not_given(train_dataloaders, method, batch_arg_name)

        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val,
                                 max_trials=max_trials, batch_arg_name=batch_arg_name, margin=margin,
                                 max_val=max_val)
        finder.end_run_when_done = True
        _run_with_finder(self._trainer, finder, model, method, train_dataloaders, val_dataloaders, dataloaders,
                         datamodule)
        return finder.optimal_batch_size

    def lr_find(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: Literal["fit", "validate", "test", "predict"] = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> Optional["_LRFinder"]:
        """Learning-rate range test: train ``num_training`` steps while the learning rate grows from
        ``min_lr`` to ``max_lr`` and record the (smoothed) loss at each.

        Args:
            model: the module to tune (one optimizer).
            train_dataloaders, val_dataloaders, dataloaders, datamodule: as for ``trainer.fit``.
            method: must be ``"fit"``.
            min_lr, max_lr: the range searched.
            num_training: the number of learning rates tried (one optimizer step each).
            mode: ``"exponential"`` or ``"linear"`` growth of the learning rate.
            early_stop_threshold: stop once the smoothed loss exceeds this multiple of the best one seen
                (None: never stop early).
            update_attr: set the suggestion on ``model.lr``/``model.learning_rate`` (or ``attr_name``), in the
                module or its ``hparams``.
            attr_name: the attribute holding the learning rate, if not ``lr``/``learning_rate``.

        Returns:
            The :class:`~featherlight.tuner.lr_finder._LRFinder` with ``results``, ``suggestion()`` and
            ``plot()``, or None when ``fast_dev_run`` is on.
        """
        if method != "fit":
            raise MisconfigurationException("method='fit' is the only valid configuration to run lr finder.")
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        _check_lr_find_configuration(self._trainer)
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        finder.end_run_when_done = True
        _run_with_finder(self._trainer, finder, model, "fit", train_dataloaders, val_dataloaders, None, datamodule)
        return finder.optimal_lr


# ------------------------------------------------------------------------------------------ configuration checks
def _check_tuner_configuration(train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit":
        if dataloaders is not None:
            raise MisconfigurationException(
                "In tuner with method='fit', `dataloaders` argument should be None, please consider setting "
                "`train_dataloaders` and `val_dataloaders` instead."
            )
    elif train_dataloaders is not None or val_dataloaders is not None:
        raise MisconfigurationException(
            f"In tuner with `method`={method!r}, `train_dataloaders` and `val_dataloaders` arguments should be None, "
            "please consider setting `dataloaders` instead."
        )


def _check_scale_batch_size_configuration(trainer: "Trainer") -> None:
    if trainer.strategy.world_size > 1:
        raise ValueError("Tuning the batch size is not supported with distributed strategies; use `devices=1`.")
    if any(isinstance(cb, BatchSizeFinder) for cb in trainer.callbacks):
        raise ValueError(
            "Trainer is already configured with a `BatchSizeFinder` callback. Please remove it if you want to use "
            "the Tuner (or let the callback do the search: `trainer.fit` runs it)."
        )


def _check_lr_find_configuration(trainer: "Trainer") -> None:
    if any(isinstance(cb, LearningRateFinder) for cb in trainer.callbacks):
        raise ValueError(
            "Trainer is already configured with a `LearningRateFinder` callback. Please remove it if you want to use "
            "the Tuner (or let the callback do the search: `trainer.fit` runs it)."
        )


# ------------------------------------------------------------------------------------------ running a finder
def _run_with_finder(trainer: "Trainer", finder: Any, model: "LightningModule", method: str, train_dataloaders: Any,
                     val_dataloaders: Any, dataloaders: Any, datamodule: Any) -> None:
    """Run the ``method`` entry point with ``finder`` as the only callback; the finder ends the run after
    its search. The trainer, module and RNGs are put back as they were afterwards, except that the run's
    module, datamodule and dataloaders stay attached (Lightning's state after a tuner call)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a `LightningModule`, got {type(model).__name__}.")
    dms = [d for d in (datamodule, trainer.datamodule) if isinstance(d, LightningDataModule)]
    with _Preserved(trainer, model, dms):
        trainer.callbacks = [finder]
        quiet_trainer(trainer)
        try:
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            elif method == "validate":
                trainer.validate(model, dataloaders, datamodule=datamodule, verbose=False)
            elif method == "test":
                trainer.test(model, dataloaders, datamodule=datamodule, verbose=False)
            else:
                trainer.predict(model, dataloaders, datamodule=datamodule, return_predictions=False)
        except _TunerExitException:
            pass
        attached = {name: getattr(trainer, name) for name in _ATTACHED}
    for name, value in attached.items():
        setattr(trainer, name, value)
    trainer.strategy.connect(model)
    model.trainer = trainer
    if trainer.datamodule is not None:
        trainer.datamodule.trainer = trainer


# what a tuner call leaves on the trainer, as Lightning's does: the module, the datamodule and the dataloaders
_ATTACHED = ("lightning_module", "datamodule", "train_dataloader", "val_dataloaders", "test_dataloaders",
             "predict_dataloaders", "num_training_batches", "num_val_batches", "num_test_batches",
             "num_predict_batches", "val_check_batch")
