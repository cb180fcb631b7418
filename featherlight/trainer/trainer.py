"""The Trainer: flags chosen once, four entry points, and the properties Lightning users read.

``fit`` -> ``strategy.launch`` -> ``_run_stage`` -> ``fit_loop.run_fit`` -> ``step`` -> ``forward_backward`` ->
``training_step``: the loop lives in ``fit_loop.py`` (the optimisation step in ``step.py``, evaluation in
``eval_loop.py``); ``run.py`` holds what happens around it. The Trainer is a face over its parts:

* ``progress`` (:class:`~featherlight.trainer.progress.LoopState`): the loop's counters and where it is;
* ``hooks`` (:class:`~featherlight.trainer.dispatch.HookDispatcher`): calls every hook, profiles them;
* ``results`` (:class:`~featherlight.trainer.logging.LogState`): what ``self.log`` recorded and where it goes;
* ``data`` (:class:`~featherlight.trainer.data.DataConnector`): the dataloaders and a batch's way to the device;
* ``optimization`` (:class:`~featherlight.trainer.step.Optimization`): the optimisation step of a fit;
* ``interrupts`` (:class:`~featherlight.trainer.interrupt.Interrupts`): the signals that stop a fit;
* ``strategy`` (with its ``precision``), ``profiler``, ``callbacks``, ``loggers`` as in Lightning.
"""
from __future__ import annotations

import contextlib
import math
import os
from datetime import timedelta
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch

from featherlight.callbacks.callback import Callback, bind_logging
from featherlight.core.datamodule import LightningDataModule
from featherlight.core.mixins.hparams_mixin import drop_unpicklable_hparams
from featherlight.core.module import LightningModule
from featherlight.core.optimizer import LRSchedulerConfig
from featherlight.accelerators.accelerator import Accelerator, accelerator_for
from featherlight.io.async_checkpoint_io import PendingCheckpoint
# imported (not only for type checking) so the `logger`/`profiler` annotations resolve for LightningCLI, which
# offers `--trainer.logger CSVLogger` from them; jsonargparse would re-read this whole file to resolve them otherwise
from featherlight.loggers.logger import Logger
from featherlight.precision.precision import _select_precision
from featherlight.profilers.profiler import Profiler
from featherlight.strategies.select import select_strategy
from featherlight.strategies.strategy import Strategy
from featherlight.trainer import data as _data
from featherlight.trainer import fit_loop, flags, pitfalls, restart, run
from featherlight.trainer.checkpoint import _resolve_ckpt_path, _restore_module_and_callbacks, _restore_training_state
from featherlight.trainer.data import DataConnector
from featherlight.trainer.dispatch import HookDispatcher
from featherlight.trainer.interrupt import Interrupts
from featherlight.trainer.logging import LogState
from featherlight.trainer.loop_view import FitLoopView
from featherlight.trainer.progress import LoopState
from featherlight.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from featherlight.trainer.step import Optimization
from featherlight.utilities.exceptions import MisconfigurationException, TrainingInterrupted, _TunerExitException
from featherlight.utilities.rank_zero import WarningCache, rank_zero_info, rank_zero_warn
from featherlight.utilities.warnings import PossibleUserWarning

_warnings = WarningCache()
_PATH = Union[str, "os.PathLike[str]"]


class Trainer:
    """Runs a LightningModule: ``fit``, ``validate``, ``test`` and ``predict``.

    Flags keep Lightning's names, defaults and meaning; see the docstrings of each property. The
    accelerator, strategy and precision are resolved once here into small objects the loop calls.
    """

    @flags.defaults_from_env_vars
    def __init__(
        self,
        *,
        accelerator: Union[str, Any] = "auto",
        strategy: Union[str, Strategy] = "auto",
        devices: Union[list[int], str, int] = "auto",
        num_nodes: int = 1,
        precision: Optional[Union[str, int]] = None,
        logger: Optional[Union[Logger, Iterable[Logger], bool]] = None,
        callbacks: Optional[Union[list[Callback], Callback]] = None,
        fast_dev_run: Union[int, bool] = False,
        max_epochs: Optional[int] = None,
        min_epochs: Optional[int] = None,
        max_steps: int = -1,
        min_steps: Optional[int] = None,
        max_time: Optional[Union[str, timedelta, dict[str, int]]] = None,
        limit_train_batches: Optional[Union[int, float]] = None,
        limit_val_batches: Optional[Union[int, float]] = None,
        limit_test_batches: Optional[Union[int, float]] = None,
        limit_predict_batches: Optional[Union[int, float]] = None,
        overfit_batches: Union[int, float] = 0.0,
        val_check_interval: Optional[Union[int, float]] = None,
        check_val_every_n_epoch: Optional[int] = 1,
        num_sanity_val_steps: Optional[int] = None,
        log_every_n_steps: Optional[int] = None,
        enable_checkpointing: Optional[bool] = None,
        enable_progress_bar: Optional[bool] = None,
        enable_model_summary: Optional[bool] = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
        deterministic: Optional[Union[bool, str]] = None,
        benchmark: Optional[bool] = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Optional[Union[Profiler, str]] = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Optional[Any] = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: Optional[_PATH] = None,
        enable_autolog_hparams: bool = True,
        model_registry: Optional[str] = None,
        interrupt_signals: Iterable[Union[str, int]] = ("SIGTERM",),
    ) -> None:
        self.state = TrainerState()
        self.progress = LoopState()
        self.results = LogState()
        self.hooks = HookDispatcher(self)
        self.data = DataConnector(self)
        self.interrupts = Interrupts(interrupt_signals)
        self.optimization: Optional[Optimization] = None
        #: warnings featherlight gives once per run (a fresh cache at each entry point)
        self.warnings = WarningCache()
        self.should_stop = False
        self.inference_mode = inference_mode
        self.detect_anomaly = bool(detect_anomaly)
        self.barebones = barebones
        self.enable_autolog_hparams = enable_autolog_hparams
        self.sync_batchnorm = sync_batchnorm
        self.use_distributed_sampler = use_distributed_sampler
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.lightning_module: Optional[LightningModule] = None  # type: ignore[assignment]
        self.datamodule: Optional[LightningDataModule] = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.ckpt_path: Optional[str] = None
        self.predict_loop_predictions: list = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.num_training_batches: Union[int, float] = float("inf")
        self.num_val_batches: list[Union[int, float]] = []
        self.num_test_batches: list[Union[int, float]] = []
        self.num_predict_batches: list[Union[int, float]] = []
        self.num_sanity_val_batches: list[Union[int, float]] = []
        self.val_check_batch: Union[int, float] = float("inf")
        self._run_log_dir: Optional[str] = None  # rank zero's log dir, agreed on when a run starts

        # ---- barebones and fast_dev_run switch features off as Lightning does
        if barebones:
            flags.check_barebones(logger=logger, enable_checkpointing=enable_checkpointing,
                                  enable_progress_bar=enable_progress_bar, enable_model_summary=enable_model_summary,
                                  log_every_n_steps=log_every_n_steps, profiler=profiler,
                                  num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run,
                                  detect_anomaly=detect_anomaly)
            logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
            num_sanity_val_steps = 0
        if isinstance(fast_dev_run, bool):
            fast_dev_run_n = 1 if fast_dev_run else 0
        elif isinstance(fast_dev_run, int) and fast_dev_run >= 0:
            fast_dev_run_n = fast_dev_run
        else:
            raise MisconfigurationException(
                f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0 (an int) or a bool."
            )
        # as in Lightning, `fast_dev_run=1` reads back as True
        self.fast_dev_run: Union[int, bool] = (True if fast_dev_run_n == 1 else fast_dev_run) if fast_dev_run_n else False

        # ---- stopping. `max_epochs=None` is resolved when a fit starts (1000, or -1 when `max_steps`/`max_time` bound
        # the run), as Lightning does, so `trainer.max_epochs` reads None until then
        if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1):
            raise MisconfigurationException(
                f"`max_epochs` must be a non-negative integer or -1. You passed in {max_epochs}. Use -1 to train "
                "without an epoch limit."
            )
        if not isinstance(max_steps, int) or max_steps < -1:
            raise MisconfigurationException(
                f"`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in {max_steps}."
            )
        self.max_epochs: Optional[int] = max_epochs
        self.min_epochs = min_epochs
        self.max_steps = max_steps
        self.min_steps = min_steps

        # ---- batches per run (under fast_dev_run the limits are its batch count, as in Lightning)
        self.overfit_batches = _data.check_limit(overfit_batches, "overfit_batches")
        if not fast_dev_run_n:
            self.limit_train_batches = _data.check_limit(limit_train_batches, "limit_train_batches")
            self.limit_val_batches = _data.check_limit(limit_val_batches, "limit_val_batches")
            self.limit_test_batches = _data.check_limit(limit_test_batches, "limit_test_batches")
            self.limit_predict_batches = _data.check_limit(limit_predict_batches, "limit_predict_batches")
        else:
            self.limit_train_batches = self.limit_val_batches = fast_dev_run_n
            self.limit_test_batches = self.limit_predict_batches = fast_dev_run_n
        if self.overfit_batches > 0:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        if not isinstance(self.num_sanity_val_steps, int) or self.num_sanity_val_steps < -1:
            raise MisconfigurationException(
                f"`num_sanity_val_steps` must be -1 (all batches), 0 (off) or a positive int, got {num_sanity_val_steps!r}."
            )
        flags.check_validation_schedule(check_val_every_n_epoch, val_check_interval)
        self.val_check_interval: Union[int, float] = (
            1.0 if fast_dev_run_n else _data.check_limit(val_check_interval, "val_check_interval"))
        self.check_val_every_n_epoch = check_val_every_n_epoch
        flags.check_reload_every(reload_dataloaders_every_n_epochs)
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        if fast_dev_run_n:
            self.max_steps, self.max_epochs = fast_dev_run_n, 1
            self.num_sanity_val_steps = 0
            self.val_check_interval = 1.0
            self.check_val_every_n_epoch = 1
            self.log_every_n_steps = 1
            rank_zero_info(
                f"Running in `fast_dev_run` mode: will run the requested loop using {fast_dev_run_n} batch(es). "
                "Logging and checkpointing is suppressed."
            )

        # ---- optimisation
        flags.check_optimisation(accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm)
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm.lower() if gradient_clip_algorithm else None

        # ---- devices, strategy, precision: resolved once
        self.strategy: Strategy = select_strategy(strategy, accelerator, devices, num_nodes)
        self.strategy.num_nodes = num_nodes
        self.num_nodes = num_nodes
        precision_plugin, checkpoint_io = flags.split_plugins(plugins, precision)
        if checkpoint_io is not None:
            self.strategy.checkpoint_io = checkpoint_io
        self.strategy.precision = _select_precision(
            "32-true" if precision is None else precision, self.strategy.root_device, precision_plugin
        )
        self.deterministic, self.benchmark = flags.set_determinism(deterministic, benchmark)

        # ---- loggers, profiler, callbacks
        self.loggers = flags.build_loggers(logger, fast_dev_run_n, self.default_root_dir)
        self.profiler = flags.build_profiler(profiler)
        self.callbacks: list[Callback] = flags.build_callbacks(
            [callbacks] if isinstance(callbacks, Callback) else list(callbacks or []),
            # under fast_dev_run the callback is kept (as in Lightning) and saves nothing
            enable_checkpointing=enable_checkpointing is not False,
            enable_progress_bar=enable_progress_bar is not False,
            enable_model_summary=enable_model_summary is not False,
            max_time=max_time,
            explicit={"enable_checkpointing": enable_checkpointing, "enable_progress_bar": enable_progress_bar,
                      "enable_model_summary": enable_model_summary},
        )

    # ================================================================== entry points
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[_PATH] = None,
        weights_only: Optional[bool] = None,
    ) -> None:
        """Train ``model`` (optionally resuming from ``ckpt_path``: a path, ``"last"`` or ``"best"``).

        Loading a checkpoint never runs code from it unless ``weights_only=False``."""
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._check_loader_args(train_dataloaders, val_dataloaders, datamodule, "fit")
        self.data.given = {"train": train_dataloaders, "val": val_dataloaders}
        self.train_dataloader, self.data.train_loaded_epoch = None, None  # every fit asks for its loaders anew
        with self._running(model, TrainerFn.FITTING, datamodule):
            # the strategy may run this in other processes too (ddp_spawn) or start them first (ddp)
            self.strategy.launch(self._run_stage, TrainerFn.FITTING, ckpt_path, weights_only is not False, trainer=self)

    def validate(
        self,
        model: Optional[LightningModule] = None,
        dataloaders: Any = None,
        ckpt_path: Optional[_PATH] = None,
        verbose: bool = True,
        datamodule: Optional[LightningDataModule] = None,
        weights_only: Optional[bool] = None,
    ) -> list[dict[str, float]]:
        """Run one validation epoch; returns one dict of logged metrics per dataloader."""
        return self._evaluate(model, dataloaders, ckpt_path, verbose, datamodule, TrainerFn.VALIDATING, weights_only)

    def test(
        self,
        model: Optional[LightningModule] = None,
        dataloaders: Any = None,
        ckpt_path: Optional[_PATH] = None,
        verbose: bool = True,
        datamodule: Optional[LightningDataModule] = None,
        weights_only: Optional[bool] = None,
    ) -> list[dict[str, float]]:
        """Run one test epoch; returns one dict of logged metrics per dataloader."""
        return self._evaluate(model, dataloaders, ckpt_path, verbose, datamodule, TrainerFn.TESTING, weights_only)

    def predict(
        self,
        model: Optional[LightningModule] = None,
        dataloaders: Any = None,
        datamodule: Optional[LightningDataModule] = None,
        return_predictions: Optional[bool] = None,
        ckpt_path: Optional[_PATH] = None,
        weights_only: Optional[bool] = None,
    ) -> Any:
        """Run ``predict_step`` over the data; returns a list of outputs (a list per dataloader if several)."""
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_loader_args(dataloaders, None, datamodule, "predict")
        self.data.given = {"predict": dataloaders}
        model, ckpt_path = self._model_or_attached(model, "predict"), self._default_ckpt_path(model, ckpt_path, "predict")
        out = None
        with self._running(model, TrainerFn.PREDICTING, datamodule):
            out = self.strategy.launch(self._run_stage, TrainerFn.PREDICTING, ckpt_path, weights_only is not False,
                                       True, return_predictions is not False, trainer=self)
        return out

    def _evaluate(self, model: Optional[LightningModule], dataloaders: Any, ckpt_path: Optional[_PATH], verbose: bool,
                  datamodule: Optional[LightningDataModule], fn: TrainerFn, weights_only: Optional[bool]) -> Any:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_loader_args(dataloaders, None, datamodule, fn.value)
        self.data.given = {"val" if fn == TrainerFn.VALIDATING else "test": dataloaders}
        model, ckpt_path = self._model_or_attached(model, fn.value), self._default_ckpt_path(model, ckpt_path, fn.value)
        out = None
        with self._running(model, fn, datamodule):
            out = self.strategy.launch(self._run_stage, fn, ckpt_path, weights_only is not False, verbose,
                                       trainer=self)
        return out

    def _default_ckpt_path(self, model: Optional[LightningModule], ckpt_path: Optional[_PATH], fn: str) -> Any:
        """Lightning's rule: evaluating without a model (the one of the previous fit) uses the best checkpoint that
        fit saved, with a warning. Without one, featherlight evaluates the attached module's current weights."""
        if model is not None or ckpt_path is not None or not getattr(self.checkpoint_callback, "best_model_path", ""):
            return ckpt_path
        rank_zero_warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call will be "
            f"used. You can pass `.{fn}(ckpt_path='best')` to use the best model or `.{fn}(ckpt_path='last')` to use "
            "the last model. If you pass a value, this warning will be silenced."
        )
        return "best"

    def _model_or_attached(self, model: Optional[LightningModule], fn: str) -> LightningModule:
        if model is None:
            if self.lightning_module is None:
                raise TypeError(
                    f"`Trainer.{fn}()` requires a `LightningModule` when it hasn't been passed in a previous run. "
                    f"Pass one: `trainer.{fn}(model, ...)`."
                )
            return self.lightning_module
        return model

    @staticmethod
    def _check_loader_args(loaders: Any, val_loaders: Any, datamodule: Any, fn: str) -> None:
        if datamodule is not None and (loaders is not None or val_loaders is not None):
            raise MisconfigurationException(
                f"You cannot pass both `trainer.{fn}(dataloaders=..., datamodule=...)`; pass one of them."
            )
        if datamodule is not None and not isinstance(datamodule, LightningDataModule):
            raise MisconfigurationException(
                f"`datamodule` must be a `LightningDataModule`, got {type(datamodule).__name__}."
            )

    # ================================================================== the run
    @contextlib.contextmanager
    def _running(self, model: LightningModule, fn: TrainerFn,
                 datamodule: Optional[LightningDataModule]) -> Iterator[None]:
        """Around an entry point's run: attach the module, set the status, handle a stop or a failure. A context
        (not a frame between the entry point and its loop)."""
        if not isinstance(model, LightningModule):
            raise TypeError(
                f"`model` must be a `LightningModule`, got `{type(model).__qualname__}`. Subclass "
                "`featherlight.LightningModule` (or wrap your `nn.Module` in one)."
            )
        self.state.fn, self.state.status, self.state.stage = fn, TrainerStatus.RUNNING, None
        self.should_stop = False
        self.results.reset()  # a run starts with no logged values (a `validate` after a `fit` too)
        self.warnings = WarningCache()  # each warning fires once per run
        self._attach(model, datamodule)
        try:
            yield
        except _TunerExitException:  # a tuner's finder ended the run on purpose: tear down as a finished one
            run.teardown(self, fn.value)
        except BaseException as exc:
            self.state.status = TrainerStatus.INTERRUPTED
            pitfalls.device_hint(exc, self.hooks.current)
            run.on_exception(self, exc)
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, SystemExit):
                raise TrainingInterrupted() from exc  # a KeyboardInterrupt that is also Lightning's SystemExit
            raise
        finally:
            pitfalls.stop_sync_watch()  # a run that ended inside a watched step leaves torch's Tensor as it was
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None

    def _attach(self, model: LightningModule, datamodule: Optional[LightningDataModule]) -> None:
        self.lightning_module = model
        model.trainer = self
        self.strategy.connect(model)
        if datamodule is not None:
            self.datamodule = datamodule
            datamodule.trainer = self
        elif self.state.fn == TrainerFn.FITTING:
            # validate/test/predict without a datamodule fall back on the datamodule of an earlier fit
            self.datamodule = None

    def _run_stage(self, fn: TrainerFn, ckpt_path: Optional[_PATH], weights_only: bool, verbose: bool = True,
                   return_predictions: bool = True) -> Any:
        """Everything between the entry point and the loops: hooks, setup, optimizers, restore; then the loop."""
        hooks, strategy = self.hooks, self.strategy
        stage = fn.value
        if fn == TrainerFn.FITTING:
            run.resolve_epoch_limit(self)
        drop_unpicklable_hparams(self.lightning_module)  # they could not go into a checkpoint (Lightning's rule)
        run.merge_module_callbacks(self)
        bind_logging(self.callbacks, self)  # `Callback.log` logs through this run's module
        hooks.rebuild()
        strategy.setup_environment()
        run.prepare_data(self)
        run.prepare_loggers(self)
        self._run_log_dir = None
        self._run_log_dir = strategy.broadcast(self._local_log_dir())  # every rank sees rank zero's
        # the local rank names the report file only when several processes write one each (as in Lightning)
        local_rank = self.local_rank if self.world_size > 1 else None
        self.profiler.setup(stage=stage, local_rank=local_rank, log_dir=self.log_dir)
        run.setup(self, stage)
        run.check_module(self, fn)
        strategy.setup(self.lightning_module)
        hooks.rebuild()  # the module may have been replaced by a wrapper's conversion
        if fn == TrainerFn.FITTING:
            pitfalls.check_data_on_module(self)
        self.data.resolve_transfer()
        self.data.start_run()
        self.interrupts.start(strategy.world_size)
        checkpoint = None
        self.ckpt_path = None
        if ckpt_path is None and fn == TrainerFn.FITTING:
            ckpt_path = restart.resume_path(self)  # a job its launcher restarted resumes by itself
        if ckpt_path is not None:
            self.ckpt_path, checkpoint = _resolve_ckpt_path(self, ckpt_path, fn, weights_only)
        if self.ckpt_path is not None:
            checkpoint = _restore_module_and_callbacks(self, self.ckpt_path, checkpoint, weights_only)
        if fn == TrainerFn.FITTING:
            run.configure_optimizers(self)
            self.optimization = Optimization(self)
            hooks.call("on_fit_start")
            if checkpoint is not None:
                _restore_training_state(self, checkpoint, self.ckpt_path)
        run.log_hyperparams(self)
        self.lightning_module.zero_grad()
        if fn == TrainerFn.FITTING:
            with self.interrupts.installed():
                fit_loop.run_sanity_check(self)
                with torch.autograd.set_detect_anomaly(self.detect_anomaly):
                    fit_loop.run_fit(self)
            hooks.call("on_fit_end")
            out = None
        else:
            out = run.run_evaluation_entry(self, fn, verbose, return_predictions)
        run.teardown(self, stage)
        return out

    # ================================================================== checkpointing
    def save_checkpoint(
        self,
        filepath: _PATH,
        weights_only: bool = False,
        storage_options: Optional[Any] = None,
        *,
        background: bool = False,
        copies: Sequence[_PATH] = (),
    ) -> Optional[PendingCheckpoint]:
        """Write a checkpoint of the current run to ``filepath`` through the strategy's checkpoint IO plugin
        (by default atomically: temporary file, fsync, rename); ``storage_options`` go to that plugin.

        featherlight additions (keyword-only):

        * ``background=True``: the state is copied into host memory now (training may go on at once) and written on
          a background thread; the call returns a :class:`~featherlight.io.async_checkpoint_io.PendingCheckpoint`
          (on global rank zero; None elsewhere). Call its ``wait()`` before reading the file; one background write
          runs at a time (a second waits for the first), and the run's end waits for the last one. A failure is
          raised as a ``CheckpointError`` naming the file, by ``wait()`` or the next save, else when the run ends.
        * ``copies``: more paths to write the same checkpoint to, after ``filepath`` (one snapshot for all).

        With ``Trainer(plugins=[AsyncCheckpointIO()])`` every save is a background write and returns its handle.
        """
        if self.lightning_module is None:
            raise AttributeError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer. Did you call "
                "`Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,test,predict}`?"
            )
        from featherlight.trainer.checkpoint import _save_checkpoint

        return _save_checkpoint(self, filepath, weights_only, storage_options, background=background, copies=copies)

    # ================================================================== properties users read
    @property
    def fit_loop(self) -> FitLoopView:
        """Lightning's ``trainer.fit_loop`` counters (``max_epochs``, ``epoch_progress``, ``epoch_loop.batch_idx``,
        ``epoch_loop._batches_that_stepped``...) as a read-only view over ``trainer.progress``; see
        :mod:`featherlight.trainer.loop_view`. (Not the ``fit_loop`` module this file calls ``run_fit`` from.)"""
        return FitLoopView(self)

    @property
    def current_epoch(self) -> int:
        """The current epoch, counted from 0 (the number of completed epochs)."""
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (with several optimizers, every step of each counts)."""
        return self.progress.global_step

    @property
    def precision_plugin(self) -> Any:
        return self.strategy.precision

    @property
    def precision(self) -> str:
        """The resolved precision, e.g. ``"32-true"`` or ``"bf16-mixed"``."""
        return self.strategy.precision.precision  # type: ignore[union-attr]

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The module as the strategy runs it (possibly wrapped, e.g. by DDP)."""
        return self.strategy.model

    @property
    def accelerator(self) -> Accelerator:
        """The accelerator of the run's device, as in Lightning (e.g. ``isinstance(trainer.accelerator,
        CUDAAccelerator)``); ``trainer.accelerator.name`` is its ``"cpu"``/``"cuda"``/``"mps"``."""
        return accelerator_for(self.strategy.root_device)

    @property
    def device_ids(self) -> list[int]:
        return self.strategy.parallel_device_ids

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.global_rank == 0

    @property
    def default_root_dir(self) -> str:
        """Where logs and checkpoints go when no logger or callback says otherwise; a local path has ``~`` expanded."""
        from featherlight.io.paths import is_remote

        path = self._default_root_dir
        return path if is_remote(path) else os.path.normpath(os.path.expanduser(path))

    @default_root_dir.setter
    def default_root_dir(self, path: _PATH) -> None:
        self._default_root_dir = os.fspath(path)

    @property
    def loggers(self) -> list[Any]:
        """Every logger of the run (``[]`` when logging is off)."""
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: Optional[Iterable[Any]]) -> None:
        self._loggers = list(loggers) if loggers else []

    @property
    def logger(self) -> Optional[Any]:
        """The first logger, or None."""
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Optional[Any]) -> None:
        self.loggers = [] if logger is None else [logger]

    @property
    def enable_validation(self) -> bool:
        """Whether ``fit`` validates: there are validation loaders, the module defines ``validation_step`` and
        ``limit_val_batches`` is not 0."""
        from featherlight.utilities.model_helpers import is_overridden

        module = self.lightning_module
        return module is not None and self.limit_val_batches != 0 and self.data.has_source("val") and \
            is_overridden("validation_step", module, LightningModule)

    @contextlib.contextmanager
    def init_module(self, empty_init: Optional[bool] = None) -> Iterator[None]:
        """Create a module's parameters directly on the device (and in the dtype) this Trainer runs it with.

        ``empty_init`` is accepted for Lightning compatibility; parameters are always initialised (featherlight's
        strategies load or shard weights after ``configure_model``, not into uninitialised memory)."""
        from featherlight.precision.precision import DoublePrecision
        from featherlight.strategies.fsdp import FSDPStrategy

        if isinstance(self.strategy, FSDPStrategy):
            rank_zero_warn(
                f"`trainer.init_module` cannot fully support proper instantiation of your model with the "
                f"`{type(self.strategy).__name__}` strategy. Please instantiate your model inside the "
                "`LightningModule.configure_model` hook instead (it runs once the processes exist, and the "
                "strategy shards what it creates).",
                category=PossibleUserWarning,
            )
        precision = self.strategy.precision
        # the "-true" precisions create floating tensors in their dtype (their forward context sets the default)
        dtype = precision.forward_context() if isinstance(precision, DoublePrecision) else contextlib.nullcontext()
        with self.strategy.root_device, dtype:
            yield

    @property
    def log_dir(self) -> Optional[str]:
        """The first logger's directory (``save_dir/name/version_N``), else ``default_root_dir``.

        During a run this is rank zero's value, agreed on by every rank when the run started, so reading
        it never issues a collective (a rank-zero-only reader cannot hang the others)."""
        if self._run_log_dir is not None:
            return self._run_log_dir
        return self._local_log_dir()

    def _local_log_dir(self) -> Optional[str]:
        if self.loggers:
            first = self.loggers[0]
            from featherlight.loggers.csv_logs import CSVLogger
            from featherlight.loggers.tensorboard import TensorBoardLogger

            return first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
        return self.default_root_dir

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Every value logged with ``self.log``, as tensors (what ModelCheckpoint/EarlyStopping monitor)."""
        self.results.refresh(self)
        return self.results.callback

    @property
    def logged_metrics(self) -> dict[str, Any]:
        """The values sent (or due) to the loggers."""
        self.results.refresh(self)
        return self.results.logged

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True``, as Python numbers."""
        self.results.refresh(self)
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in self.results.pbar.items()}

    @property
    def estimated_stepping_batches(self) -> Union[int, float]:
        """Total optimizer steps the fit will take, accounting for accumulation, limits and ``max_steps``."""
        if self.max_epochs == -1:
            return float("inf") if self.max_steps == -1 else self.max_steps
        if self.train_dataloader is None:
            rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
            self.data.load_train()
        total = self.num_training_batches
        if math.isinf(total):
            return self.max_steps if self.max_steps != -1 else float("inf")
        steps = math.ceil(total / self.accumulate_grad_batches) * max(self.max_epochs or 1, 1)
        return min(steps, self.max_steps) if self.max_steps != -1 else steps

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def training(self) -> bool:
        return self.state.stage == RunningStage.TRAINING

    @training.setter
    def training(self, value: bool) -> None:
        if value:
            self.state.stage = RunningStage.TRAINING

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == RunningStage.SANITY_CHECKING

    @property
    def validating(self) -> bool:
        return self.state.stage == RunningStage.VALIDATING

    @property
    def testing(self) -> bool:
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        return self.state.stage == RunningStage.PREDICTING

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def is_last_batch(self) -> bool:
        return self.progress.batch_idx + 1 >= self.num_training_batches

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from featherlight.callbacks.model_checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Optional[Any]:
        """The first ModelCheckpoint callback, or None."""
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from featherlight.callbacks.early_stopping import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Optional[Any]:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Optional[Any]:
        from featherlight.callbacks.progress.progress_bar import ProgressBar

        for c in self.callbacks:
            if isinstance(c, ProgressBar):
                return c
        return None

    @property
    def lr_scheduler_configs_list(self) -> list[LRSchedulerConfig]:
        return self.lr_scheduler_configs

    @property
    def received_sigterm(self) -> bool:
        return self.interrupts.received_sigterm
