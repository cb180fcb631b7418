"""The Trainer: flags chosen once, four entry points, and the properties Lightning users read.

``fit`` -> ``_run`` -> ``fit_loop.run_fit`` -> ``step`` -> ``forward_backward`` -> ``training_step``: the loop
itself lives in ``fit_loop.py`` and ``eval_loop.py``; this file sets the stage around it.
"""
from __future__ import annotations

import contextlib
import math
import os
from datetime import timedelta
from typing import Any, Iterable, Iterator, Optional, Union

import torch

from featherlight.callbacks.callback import Callback
from featherlight.core.datamodule import LightningDataModule
from featherlight.core.module import LightningModule
from featherlight.core.optimizer import LightningOptimizer, LRSchedulerConfig, _init_optimizers_and_lr_schedulers
# imported (not only for type checking) so the `logger`/`profiler` annotations resolve for LightningCLI, which
# offers `--trainer.logger CSVLogger` from them; jsonargparse would re-read this whole file to resolve them otherwise
from featherlight.loggers.logger import Logger
from featherlight.precision.precision import _select_precision
from featherlight.profilers.profiler import Profiler
from featherlight.strategies.strategy import Strategy, _select_strategy
from featherlight.trainer import data as _data
from featherlight.trainer.dispatch import _Dispatcher, _call_module_hook
from featherlight.trainer.logging import _LogState
from featherlight.trainer.states import LoopState, RunningStage, TrainerFn, TrainerState, TrainerStatus, _StopRun
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import WarningCache, rank_zero_info, rank_zero_warn

_warnings = WarningCache()
_NO_PROFILE = contextlib.nullcontext()
_PATH = Union[str, "os.PathLike[str]"]


class Trainer:
    """Runs a LightningModule: ``fit``, ``validate``, ``test`` and ``predict``.

    Flags keep Lightning's names, defaults and meaning; see the docstrings of each property. The
    accelerator, strategy and precision are resolved once here into small objects the loop calls.
    """

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
        self._loop = LoopState()
        self._log = _LogState()
        self._dispatch = _Dispatcher(self)
        self._current_fx: Optional[str] = None
        self._warnings = WarningCache()
        self.should_stop = False
        self._last_step_skipped = False
        self._inference_mode = inference_mode
        self._detect_anomaly = bool(detect_anomaly)
        self.barebones = barebones
        self._enable_autolog_hparams = enable_autolog_hparams
        from featherlight.trainer.interrupt import _parse_signals

        self._interrupt_signals = _parse_signals(interrupt_signals)
        self._signal_received: Optional[int] = None
        self.sync_batchnorm = sync_batchnorm
        self.use_distributed_sampler = use_distributed_sampler
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.lightning_module: Optional[LightningModule] = None  # type: ignore[assignment]
        self.datamodule: Optional[LightningDataModule] = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.ckpt_path: Optional[str] = None
        self.predict_loop_predictions: list = []
        self._given_loaders: dict[str, Any] = {}
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self._train_loaded_epoch: Optional[int] = None
        self._val_loaded_epoch: Optional[int] = None
        self.num_training_batches: Union[int, float] = float("inf")
        self._train_len: Union[int, float] = float("inf")
        self.num_val_batches: list[Union[int, float]] = []
        self.num_test_batches: list[Union[int, float]] = []
        self.num_predict_batches: list[Union[int, float]] = []
        self.num_sanity_val_batches: list[Union[int, float]] = []
        self.val_check_batch: Union[int, float] = float("inf")
        self._val_loaders: Optional[list] = None
        self._val_on: Optional[bool] = None
        self._val_limits: list = []
        self._batch_hooks: tuple = (None, None, None)
        self._moves_batches = True
        self._forward_context: Any = None
        self._convert_input: Any = None
        self._pre_backward: Any = None
        self._scale_loss: Any = None
        self._backward_hook: Any = None
        self._clip_active = False
        self._plain_step = False
        self._signal_every = 0
        self._run_log_dir: Optional[str] = None
        self._verbose = True
        self._return_predictions = True
        self._resume: Any = None  # a mid-epoch position from the checkpoint, consumed by the fit loop
        self._train_store: Any = None

        # ---- barebones and fast_dev_run switch features off as Lightning does
        if barebones:
            # everything that costs speed is off; asking for one of them explicitly is a contradiction
            for flag, value in (("logger", logger), ("enable_checkpointing", enable_checkpointing),
                                ("enable_progress_bar", enable_progress_bar),
                                ("enable_model_summary", enable_model_summary),
                                ("log_every_n_steps", log_every_n_steps), ("profiler", profiler),
                                ("num_sanity_val_steps", num_sanity_val_steps), ("fast_dev_run", fast_dev_run),
                                ("detect_anomaly", detect_anomaly)):
                if value not in (None, False, 0):
                    raise ValueError(
                        f"`Trainer(barebones=True, {flag}={value!r})` was passed, but barebones mode turns "
                        f"{flag} off because it costs speed. Remove `{flag}` or set `barebones=False`."
                    )
            logger, enable_checkpointing, enable_progress_bar, enable_model_summary = False, False, False, False
            num_sanity_val_steps = 0
            rank_zero_info(
                "You are running in `Trainer(barebones=True)` mode: checkpointing, the progress bar, the model "
                "summary, logging (`self.log` is a no-op), sanity checking, fast_dev_run, anomaly detection and "
                "profiling are off."
            )
        if isinstance(fast_dev_run, bool):
            fast_dev_run_n = 1 if fast_dev_run else 0
        elif isinstance(fast_dev_run, int) and fast_dev_run >= 0:
            fast_dev_run_n = fast_dev_run
        else:
            raise MisconfigurationException(
                f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0 (an int) or a bool."
            )
        self.fast_dev_run: Union[int, bool] = fast_dev_run if fast_dev_run_n else False

        # ---- stopping
        if max_epochs is None and max_steps == -1 and max_time is None and not fast_dev_run_n:
            rank_zero_info(
                "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set `max_epochs=-1`."
            )
            max_epochs = 1000
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs
        self.max_steps = max_steps
        self.min_steps = min_steps
        if not isinstance(max_steps, int) or max_steps < -1:
            raise MisconfigurationException(f"`max_steps` must be -1 (no limit) or a non-negative int, got {max_steps!r}.")
        if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1):
            raise MisconfigurationException(f"`max_epochs` must be -1 (no limit) or a non-negative int, got {max_epochs!r}.")

        # ---- batches per run
        self.overfit_batches = _data._check_limit(overfit_batches, "overfit_batches")
        self.limit_train_batches = _data._check_limit(1.0 if limit_train_batches is None else limit_train_batches,
                                                      "limit_train_batches")
        self.limit_val_batches = _data._check_limit(1.0 if limit_val_batches is None else limit_val_batches,
                                                    "limit_val_batches")
        self.limit_test_batches = _data._check_limit(1.0 if limit_test_batches is None else limit_test_batches,
                                                     "limit_test_batches")
        self.limit_predict_batches = _data._check_limit(
            1.0 if limit_predict_batches is None else limit_predict_batches, "limit_predict_batches")
        if self.overfit_batches > 0:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        if not isinstance(self.num_sanity_val_steps, int) or self.num_sanity_val_steps < -1:
            raise MisconfigurationException(
                f"`num_sanity_val_steps` must be -1 (all batches), 0 (off) or a positive int, got {num_sanity_val_steps!r}."
            )
        self.val_check_interval: Union[int, float] = 1.0 if val_check_interval is None else val_check_interval
        if isinstance(self.val_check_interval, float) and not 0.0 < self.val_check_interval <= 1.0:
            raise MisconfigurationException(
                f"`val_check_interval={val_check_interval}` must be a fraction in (0.0, 1.0] or an int number of "
                "training batches."
            )
        if check_val_every_n_epoch is not None and (not isinstance(check_val_every_n_epoch, int)
                                                    or check_val_every_n_epoch < 1):
            raise MisconfigurationException(
                f"`check_val_every_n_epoch` must be a positive int or None, got {check_val_every_n_epoch!r}."
            )
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        if fast_dev_run_n:
            self.limit_train_batches = self.limit_val_batches = self.limit_test_batches = fast_dev_run_n
            self.limit_predict_batches = fast_dev_run_n
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
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise MisconfigurationException(
                f"`accumulate_grad_batches` must be a positive int, got {accumulate_grad_batches!r}."
            )
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_algorithm is not None and gradient_clip_algorithm.lower() not in ("norm", "value"):
            raise MisconfigurationException(
                f"`gradient_clip_algorithm` {gradient_clip_algorithm!r} is invalid. Allowed algorithms: 'norm', 'value'."
            )
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm.lower() if gradient_clip_algorithm else None

        # ---- devices, strategy, precision: resolved once
        self.strategy: Strategy = _select_strategy(strategy, accelerator, devices, num_nodes)
        self.strategy.num_nodes = num_nodes
        self.num_nodes = num_nodes
        plugin_list = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
        precision_plugins = [p for p in plugin_list if hasattr(p, "optimizer_step")]
        unknown = [p for p in plugin_list if not hasattr(p, "optimizer_step")]
        if unknown or len(precision_plugins) > 1:
            raise MisconfigurationException(
                f"`Trainer(plugins=...)` accepts one precision plugin (e.g. `MixedPrecision(...)`); got "
                f"{[type(p).__name__ for p in plugin_list]}."
            )
        precision_plugin = precision_plugins[0] if precision_plugins else None
        if precision_plugin is not None and precision is not None:
            raise MisconfigurationException(
                "Received both `precision=` and a precision plugin in `plugins=`. Choose one of them."
            )
        self.strategy.precision = _select_precision(
            "32-true" if precision is None else precision, self.strategy.root_device, precision_plugin
        )
        self._set_determinism(deterministic, benchmark)

        # ---- loggers, profiler, callbacks
        self.loggers: list[Any] = self._build_loggers(logger, fast_dev_run_n)
        self.profiler = self._build_profiler(profiler)
        self._user_callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        self.callbacks: list[Callback] = self._build_callbacks(
            self._user_callbacks,
            enable_checkpointing=not fast_dev_run_n and enable_checkpointing is not False,
            enable_progress_bar=enable_progress_bar is not False,
            enable_model_summary=enable_model_summary is not False,
            max_time=max_time,
            explicit={"enable_checkpointing": enable_checkpointing, "enable_progress_bar": enable_progress_bar,
                      "enable_model_summary": enable_model_summary},
        )

    # ================================================================== construction helpers
    def _set_determinism(self, deterministic: Optional[Union[bool, str]], benchmark: Optional[bool]) -> None:
        if deterministic not in (None, True, False, "warn"):
            raise MisconfigurationException(
                f"`deterministic={deterministic!r}` is invalid: use True, False or 'warn'."
            )
        self.deterministic = deterministic
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
            # cuBLAS needs this workspace setting to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
        elif deterministic is False:
            torch.use_deterministic_algorithms(False)
        if benchmark is None:
            benchmark = False if deterministic else None
        if deterministic and benchmark:
            rank_zero_warn("You passed `deterministic=True` and `benchmark=True`. Note that PyTorch ignores torch.backends.cudnn.deterministic=True when torch.backends.cudnn.benchmark=True.")
        if benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark
        self.benchmark = benchmark

    def _build_loggers(self, logger: Any, fast_dev_run: int) -> list[Any]:
        if fast_dev_run and logger not in (False, None, []):
            from featherlight.loggers.logger import DummyLogger

            return [DummyLogger()]
        if logger is False or logger == []:
            return []
        if logger is None or logger is True:
            if fast_dev_run:
                from featherlight.loggers.logger import DummyLogger

                return [DummyLogger()]
            import importlib.util

            if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX"):
                from featherlight.loggers.tensorboard import TensorBoardLogger

                return [TensorBoardLogger(save_dir=self.default_root_dir)]
            from featherlight.loggers.csv_logs import CSVLogger

            _warnings.info(
                "`Trainer(logger=True)` uses the CSVLogger because `tensorboard` is not installed "
                "(`pip install tensorboard` to use the TensorBoardLogger)."
            )
            return [CSVLogger(save_dir=self.default_root_dir)]
        return list(logger) if isinstance(logger, Iterable) else [logger]

    def _build_profiler(self, profiler: Any) -> Any:
        from featherlight import profilers

        if profiler is None:
            out = profilers.PassThroughProfiler()
        elif isinstance(profiler, str):
            choices = {"simple": profilers.SimpleProfiler, "advanced": profilers.AdvancedProfiler,
                       "pytorch": profilers.PyTorchProfiler, "passthrough": profilers.PassThroughProfiler}
            cls = choices.get(profiler.lower())
            if cls is None:
                raise MisconfigurationException(
                    f"When passing string value for the `profiler` parameter of `Trainer`, it can only be one of "
                    f"{sorted(choices)}, got {profiler!r}."
                )
            out = cls()
        else:
            out = profiler
        out._is_passthrough = isinstance(out, profilers.PassThroughProfiler)
        return out

    def _build_callbacks(self, user: list[Callback], *, enable_checkpointing: bool, enable_progress_bar: bool,
                         enable_model_summary: bool, max_time: Any, explicit: dict) -> list[Callback]:
        from featherlight.callbacks.model_checkpoint import ModelCheckpoint
        from featherlight.callbacks.model_summary import ModelSummary
        from featherlight.callbacks.progress.progress_bar import ProgressBar

        callbacks = list(user)
        has = lambda cls: any(isinstance(c, cls) for c in callbacks)  # noqa: E731
        if has(ModelCheckpoint) and explicit["enable_checkpointing"] is False:
            raise MisconfigurationException(
                "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks "
                "list. Remove the callback or set `enable_checkpointing=True`."
            )
        if has(ProgressBar) and explicit["enable_progress_bar"] is False:
            raise MisconfigurationException(
                "Trainer was configured with `enable_progress_bar=False` but found a progress bar in callbacks. "
                "Remove the callback or set `enable_progress_bar=True`."
            )
        if enable_model_summary and not has(ModelSummary):
            callbacks.append(ModelSummary(max_depth=1))
        if enable_progress_bar and not has(ProgressBar):
            from featherlight.callbacks.progress.tqdm_progress import TQDMProgressBar

            callbacks.append(TQDMProgressBar())
        if max_time is not None:
            from featherlight.callbacks.timer import Timer

            callbacks.append(Timer(duration=max_time, interval="step"))
        if enable_checkpointing and not has(ModelCheckpoint):
            callbacks.append(ModelCheckpoint())
        return _reorder_callbacks(callbacks)

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
        """Train ``model`` (optionally resuming from ``ckpt_path``: a path, ``"last"`` or ``"best"``)."""
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._check_loader_args(train_dataloaders, val_dataloaders, datamodule, "fit")
        self._given_loaders = {"train": train_dataloaders, "val": val_dataloaders}
        self.train_dataloader, self._train_loaded_epoch = None, None  # every fit asks for its loaders anew
        self._weights_only = weights_only is not False
        self._run(model, TrainerFn.FITTING, datamodule, ckpt_path)

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
        self._weights_only = weights_only is not False
        return self._evaluate(model, dataloaders, ckpt_path, verbose, datamodule, TrainerFn.VALIDATING)

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
        self._weights_only = weights_only is not False
        return self._evaluate(model, dataloaders, ckpt_path, verbose, datamodule, TrainerFn.TESTING)

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
        self._given_loaders = {"predict": dataloaders}
        self._weights_only = weights_only is not False
        self._return_predictions = True if return_predictions is None else return_predictions
        return self._run(self._model_or_attached(model, "predict"), TrainerFn.PREDICTING, datamodule, ckpt_path)

    def _evaluate(self, model, dataloaders, ckpt_path, verbose, datamodule, fn: TrainerFn) -> list[dict[str, float]]:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_loader_args(dataloaders, None, datamodule, fn.value)
        self._given_loaders = {"val" if fn == TrainerFn.VALIDATING else "test": dataloaders}
        self._verbose = verbose
        if model is None and ckpt_path is None and getattr(self.checkpoint_callback, "best_model_path", ""):
            # Lightning's rule: without a model, evaluate the best checkpoint of the previous fit
            ckpt_path = "best"
            rank_zero_info(f"`.{fn.value}(ckpt_path=None)` was called without a model. The best model of the "
                           f"previous `fit` call will be used: {self.checkpoint_callback.best_model_path}")
        return self._run(self._model_or_attached(model, fn.value), fn, datamodule, ckpt_path)

    def _model_or_attached(self, model: Optional[LightningModule], fn: str) -> LightningModule:
        if model is None:
            if self.lightning_module is None:
                raise MisconfigurationException(
                    f"`trainer.{fn}()` requires a `LightningModule` when it hasn't been passed in a previous run."
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
    def _run(self, model: LightningModule, fn: TrainerFn, datamodule: Optional[LightningDataModule],
             ckpt_path: Optional[_PATH]) -> Any:
        if not isinstance(model, LightningModule):
            raise TypeError(
                f"`model` must be a `LightningModule` (subclass `featherlight.LightningModule`), got "
                f"{type(model).__name__}."
            )
        self.state.fn, self.state.status, self.state.stage = fn, TrainerStatus.RUNNING, None
        self.should_stop = False
        self._eval_step_counters: dict = {}
        self._warnings = WarningCache()  # each warning fires once per run
        self._attach(model, datamodule)
        try:
            # the strategy may run this in other processes too (ddp_spawn) or start them first (ddp)
            out = self.strategy.launch(self._setup_and_run, fn, ckpt_path)
        except _StopRun:
            self._teardown(fn.value)
            out = None
        except BaseException as exc:
            self._on_exception(exc)
            raise
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None
        return out

    def _attach(self, model: LightningModule, datamodule: Optional[LightningDataModule]) -> None:
        self.lightning_module = model
        model.trainer = self
        self.strategy.connect(model)
        if datamodule is not None:
            self.datamodule = datamodule
            datamodule.trainer = self
        elif self.state.fn == TrainerFn.FITTING or not self._given_loaders_any():
            # validate/test/predict without loaders fall back on the datamodule of an earlier fit
            if self.state.fn == TrainerFn.FITTING:
                self.datamodule = None

    def _given_loaders_any(self) -> bool:
        return any(v is not None for v in self._given_loaders.values())

    def _setup_and_run(self, fn: TrainerFn, ckpt_path: Optional[_PATH]) -> Any:
        """Everything between the entry point and the loops: hooks, setup, optimizers, restore; then the loop."""
        module = self.lightning_module
        self._merge_module_callbacks()
        self._dispatch.rebuild()
        self.strategy.setup_environment()
        stage = fn.value
        # prepare_data: once per node (or once in all), before any process sets up
        if self._should_prepare_data():
            if self.datamodule is not None and _data._overrides(self.datamodule, "prepare_data"):
                self._call_datamodule("prepare_data")
            self._call_module("prepare_data")
        self.strategy.barrier("prepare_data")
        for logger in self.loggers:
            # create the log dir early so callbacks can use it (TensorBoard's without its SummaryWriter, which is
            # heavy to import and only needed for what the user adds through `logger.experiment`)
            prepare = getattr(logger, "_prepare_log_dir", None)
            prepare() if prepare is not None else getattr(logger, "experiment", None)
        self._run_log_dir = None
        self._run_log_dir = self.strategy.broadcast(self._local_log_dir())
        self.profiler.setup(stage=stage, local_rank=self.local_rank, log_dir=self.log_dir)
        if self.datamodule is not None:
            self._call_datamodule("setup", stage=stage)
        self._dispatch.call_callbacks("setup", stage)
        self._call_module("setup", stage)
        self._call_module("configure_model")
        self._check_module(fn)
        self.strategy.setup(module)
        self._dispatch.rebuild()  # the module may have been replaced by a wrapper's conversion
        self._resolve_batch_hooks()
        self._val_loaders = None
        self._val_on: Optional[bool] = None
        self.ckpt_path = self._resolve_ckpt_path(ckpt_path, fn)
        checkpoint = None
        if self.ckpt_path is not None:
            from featherlight.trainer.checkpoint import _restore_module_and_callbacks

            checkpoint = _restore_module_and_callbacks(self, self.ckpt_path)
        if fn == TrainerFn.FITTING:
            self._configure_optimizers()
            self._plain_step = self._is_plain_step()
            self._training_step = self._profiled(self.strategy.step_function("training_step"),
                                                 f"[Strategy]{type(self.strategy).__name__}.training_step")
            self._dispatch.call("on_fit_start")
            if checkpoint is not None:
                from featherlight.trainer.checkpoint import _restore_training_state

                _restore_training_state(self, checkpoint, self.ckpt_path)
        self._log_hyperparams()
        self.lightning_module.zero_grad()
        if fn == TrainerFn.FITTING:
            from featherlight.trainer import fit_loop
            from featherlight.trainer.interrupt import _signal_handlers
            from featherlight.utilities.seed import isolate_rng

            with _signal_handlers(self):
                with isolate_rng():  # the sanity check must not change what the training run draws
                    self._run_sanity_check()
                with torch.autograd.set_detect_anomaly(self._detect_anomaly):
                    fit_loop.run_fit(self)
            self._dispatch.call("on_fit_end")
            out = None
        else:
            out = self._run_evaluation_entry(fn)
        self._teardown(stage)
        return out

    def _run_evaluation_entry(self, fn: TrainerFn) -> Any:
        from featherlight.trainer import eval_loop

        if fn == TrainerFn.PREDICTING:
            loaders, limits = self._load_eval_dataloaders("predict")
            if not loaders:
                return []
            return eval_loop.run_predict(self, loaders, limits, self._return_predictions)
        prefix = "val" if fn == TrainerFn.VALIDATING else "test"
        stage = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
        loaders, limits = self._load_eval_dataloaders(prefix)
        if not loaders:
            return []
        results = eval_loop.run_evaluation(self, stage, loaders, limits)
        if self._verbose and self.is_global_zero:
            _print_results(results, "Validate" if prefix == "val" else "Test")
        return results

    def _teardown(self, stage: str) -> None:
        if self.datamodule is not None:
            self._call_datamodule("teardown", stage=stage)
        self._dispatch.call_callbacks("teardown", stage)
        self._call_module("teardown", stage)
        self._current_fx = None
        for logger in self.loggers:
            logger.finalize("success")
        self.profiler.describe()
        self.profiler.teardown(stage)
        self.strategy.teardown()

    def _on_exception(self, exc: BaseException) -> None:
        self.state.status = TrainerStatus.INTERRUPTED
        if isinstance(exc, KeyboardInterrupt):
            rank_zero_info("\nDetected KeyboardInterrupt, attempting graceful shutdown ...")
        try:
            if self._dispatch.callbacks:
                self._dispatch.call_callbacks("on_exception", exc)
            module = self.lightning_module
            if module is not None and hasattr(module, "on_exception"):
                module.on_exception(exc)
            if self.datamodule is not None:
                self.datamodule.on_exception(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) and self._dispatch.callbacks:
                # an interrupted run still releases what setup() acquired (files, workers, connections)
                stage = self.state.fn.value if self.state.fn is not None else "fit"
                if self.datamodule is not None:
                    self._call_datamodule("teardown", stage=stage)
                self._dispatch.call_callbacks("teardown", stage)
                self._call_module("teardown", stage)
        finally:
            for logger in self.loggers:
                try:
                    logger.finalize("failed")
                except Exception:  # a logger failing must not hide the original error
                    pass
            self.strategy.teardown()

    def _merge_module_callbacks(self) -> None:
        """``configure_callbacks`` results replace Trainer callbacks of the same type (Lightning's rule)."""
        extra = self._call_module("configure_callbacks")
        if not extra:
            return
        extra = [extra] if isinstance(extra, Callback) else list(extra)
        types = {type(c) for c in extra}
        from featherlight.callbacks.model_checkpoint import ModelCheckpoint

        kept = [c for c in self.callbacks if type(c) not in types and not (
            isinstance(c, ModelCheckpoint) and any(issubclass(t, ModelCheckpoint) for t in types))]
        if len(kept) != len(self.callbacks):
            rank_zero_info(
                "The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
                f"callbacks passed to Trainer: {', '.join(sorted(t.__name__ for t in types))}"
            )
        self.callbacks = _reorder_callbacks(kept + extra)

    def _should_prepare_data(self) -> bool:
        per_node = getattr(self.datamodule, "prepare_data_per_node",
                           getattr(self.lightning_module, "prepare_data_per_node", True))
        return self.local_rank == 0 if per_node else self.global_rank == 0

    def _check_module(self, fn: TrainerFn) -> None:
        module = self.lightning_module
        from featherlight.trainer.dispatch import _module_overrides

        if fn == TrainerFn.FITTING:
            if not _module_overrides(module, "training_step"):
                raise MisconfigurationException(
                    "No `training_step()` method defined. The `Trainer` expects as minimum a `training_step()`, "
                    "`train_dataloader()` and `configure_optimizers()` to be defined."
                )
            if not _module_overrides(module, "configure_optimizers"):
                raise MisconfigurationException(
                    "No `configure_optimizers()` method defined. The `Trainer` expects as minimum a "
                    "`training_step()`, `train_dataloader()` and `configure_optimizers()` to be defined."
                )
            if not module.automatic_optimization:
                if self.accumulate_grad_batches != 1:
                    raise MisconfigurationException(
                        "Automatic gradient accumulation is not supported for manual optimization. Remove "
                        "`Trainer(accumulate_grad_batches=...)` or switch to automatic optimization."
                    )
                if self.gradient_clip_val:
                    raise MisconfigurationException(
                        "Automatic gradient clipping is not supported for manual optimization. Remove "
                        "`Trainer(gradient_clip_val=...)`, or switch to automatic optimization (or call "
                        "`self.clip_gradients(...)` in `training_step`)."
                    )
        elif fn == TrainerFn.VALIDATING and not _module_overrides(module, "validation_step"):
            raise MisconfigurationException(
                "No `validation_step()` method defined to run `Trainer.validate`; define it in your LightningModule."
            )
        elif fn == TrainerFn.TESTING and not _module_overrides(module, "test_step"):
            raise MisconfigurationException(
                "No `test_step()` method defined to run `Trainer.test`; define it in your LightningModule."
            )

    def _is_plain_step(self) -> bool:
        """True when no one customises the optimizer step: the module keeps ``optimizer_step``, full precision,
        one optimizer that evaluates its closure once, no profiler. The loop then steps directly."""
        from featherlight.precision.precision import _EVALUATES_CLOSURE_ONCE, Precision
        from featherlight.trainer.dispatch import _needs_call

        module = self.lightning_module
        return (module.automatic_optimization and len(self.optimizers) == 1
                and type(self.optimizers[0]) in _EVALUATES_CLOSURE_ONCE
                and type(self.precision_plugin) is Precision and not self._dispatch._profiling
                and not _needs_call(module, "optimizer_step", LightningModule))

    def _configure_optimizers(self) -> None:
        module = self.lightning_module
        self.optimizers, self.lr_scheduler_configs = _init_optimizers_and_lr_schedulers(module)
        if module.automatic_optimization and len(self.optimizers) > 1:
            raise MisconfigurationException(
                "Training with multiple optimizers is only supported with manual optimization. Set "
                "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
                "`opt1, opt2, ... = self.optimizers()`."
            )
        if module.automatic_optimization and not self.optimizers:
            raise MisconfigurationException(
                "`configure_optimizers` returned no optimizer; automatic optimization needs one. Return an "
                "optimizer, or set `self.automatic_optimization = False`."
            )
        self.strategy._lightning_optimizers = [LightningOptimizer._to_lightning_optimizer(o, self)
                                               for o in self.optimizers]

    def _resolve_ckpt_path(self, ckpt_path: Optional[_PATH], fn: TrainerFn) -> Optional[str]:
        if ckpt_path is None:
            return None
        from featherlight.trainer.checkpoint import _resolve_ckpt_path

        return _resolve_ckpt_path(self, ckpt_path, fn)

    def _log_hyperparams(self) -> None:
        if not self.loggers or not self._enable_autolog_hparams:
            return
        module = self.lightning_module
        params: dict[str, Any] = {}
        if getattr(module, "_log_hyperparams", False):
            params.update(module.hparams_initial)
        dm = self.datamodule
        if dm is not None and getattr(dm, "_log_hyperparams", False):
            # `_class_path`: which class LightningCLI built, recorded by each of the two; not a clash
            overlap = (set(params) & set(dm.hparams_initial)) - {"_class_path"}
            clash = [k for k in overlap if params[k] is not dm.hparams_initial[k] and params[k] != dm.hparams_initial[k]]
            if clash:
                raise MisconfigurationException(
                    f"Error while merging hparams: the keys {clash} are present in both the LightningModule's and "
                    "LightningDataModule's hparams but have different values. Rename one of them."
                )
            params.update(dm.hparams_initial)
        params.pop("_class_path", None)  # LightningCLI's internal record, not a hyperparameter to log
        for logger in self.loggers:
            if params:
                logger.log_hyperparams(params)
            if hasattr(logger, "log_graph"):
                logger.log_graph(module)
            logger.save()

    # ================================================================== hooks, batches, logging helpers
    def _call_module(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        return _call_module_hook(self, hook, *args, **kwargs)

    def _call_datamodule(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        prev, self._current_fx = self._current_fx, hook
        try:
            return getattr(self.datamodule, hook)(*args, **kwargs)
        finally:
            self._current_fx = prev

    def _profiled(self, fn: Any, action: str) -> Any:
        """``fn`` itself when profiling is off (no per-call cost); else ``fn`` inside ``profile(action)``."""
        if not self._dispatch._profiling:
            return fn
        from featherlight.trainer.dispatch import _profiled

        return _profiled(self.profiler, action, fn)

    def _profile(self, action: str) -> Any:
        """A context for a once-per-epoch action: the profiler's, or a shared no-op."""
        return self.profiler.profile(action) if self._dispatch._profiling else _NO_PROFILE

    def _transfer_batch(self, batch: Any, dataloader_idx: int) -> Any:
        """Batch transfer hooks (datamodule's if it overrides them, else the module's) and the move."""
        before, transfer, after = self._batch_hooks
        if before is not None:
            batch = before(batch, dataloader_idx)
        device = self.strategy.root_device
        if transfer is not None:
            batch = transfer(batch, device, dataloader_idx)
        elif device.type != "cpu":
            from featherlight.utilities.apply_func import move_data_to_device

            batch = move_data_to_device(batch, device)
        if after is not None:
            batch = after(batch, dataloader_idx)
        convert = self._convert_input
        return convert(batch) if convert is not None else batch

    def _resolve_batch_hooks(self) -> None:
        from featherlight.precision.precision import Precision

        strategy = self.strategy
        precision = self.precision_plugin
        self._pre_backward = None if type(strategy).pre_backward is Strategy.pre_backward else strategy.pre_backward
        # per-step switches resolved once per run: a hook nobody overrides costs nothing per step
        self._scale_loss = None if type(precision).scale_loss is Precision.scale_loss else precision.scale_loss
        self._backward_hook = self._dispatch.module_hook("backward")
        self._clip_active = bool(self.gradient_clip_val) or \
            self._dispatch.module_hook("configure_gradient_clipping") is not None
        # ranks agree on a stop signal every this many batches (a collective); one process reads its flag
        self._signal_every = 0 if strategy.world_size == 1 else 50
        # full precision leaves batches alone: skip the call entirely
        self._convert_input = None if type(precision).convert_input is Precision.convert_input else \
            precision.convert_input
        hooks = []
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            dm = self.datamodule
            if dm is not None and _data._overrides(dm, name):
                hooks.append(getattr(dm, name))
            else:
                hooks.append(self._dispatch.module_hook(name))
        self._batch_hooks = tuple(hooks)
        # on the CPU in full precision with no transfer hooks a batch is used as it comes: the loop skips the call
        self._moves_batches = any(h is not None for h in hooks) or self.strategy.root_device.type != "cpu" \
            or self._convert_input is not None
        self._forward_context = None if type(precision).forward_context is Precision.forward_context else \
            precision.forward_context

    def _profiled_iter(self, loader: Any, stage: str) -> Iterator:
        it = iter(loader)
        if not self._dispatch._profiling:
            return it
        profiler = self.profiler
        action = f"[_{'Training' if stage == 'train' else 'Evaluation'}EpochLoop].{stage}_dataloader_next"

        def gen() -> Iterator:
            while True:
                with profiler.profile(action):
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                yield batch

        return gen()

    def _customises_backward(self) -> bool:
        """Whether anything beyond ``loss.backward()`` happens in ``_backward`` this run."""
        plan = self._dispatch._plan
        return plan["on_before_backward"] is not None or plan["on_after_backward"] is not None or \
            self._scale_loss is not None or self._pre_backward is not None or self._backward_hook is not None

    def _backward(self, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """on_before_backward -> (scaled) backward through the module's ``backward`` hook -> on_after_backward."""
        call = self._dispatch.call
        call("on_before_backward", loss)
        scale = self._scale_loss
        scaled = scale(loss) if scale is not None else loss
        if self._pre_backward is not None:
            self._pre_backward(scaled)
        backward = self._backward_hook
        if backward is not None:
            prev, self._current_fx = self._current_fx, "backward"
            backward(scaled, *args, **kwargs)
            self._current_fx = prev
        else:
            scaled.backward(*args, **kwargs)
        call("on_after_backward")

    def _step_optimizer(self, optimizer: torch.optim.Optimizer, closure: Any, kwargs: dict) -> Any:
        """The step behind ``LightningOptimizer.step``: closure, unscale, hooks, clipping, precision step."""
        precision = self.strategy.precision
        automatic = self.lightning_module.automatic_optimization

        def closure_then_clip() -> Any:
            out = closure()
            precision.unscale_gradients(optimizer)
            self._dispatch.call("on_before_optimizer_step", optimizer)
            if automatic and self._clip_active:
                self._clip_gradients(optimizer)
            return out

        out, stepped = precision.optimizer_step(optimizer, closure_then_clip, **kwargs)
        self._last_step_skipped = not stepped
        self._loop.global_step += 1
        return out

    def _clip_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self._call_module("configure_gradient_clipping", optimizer, gradient_clip_val=self.gradient_clip_val,
                          gradient_clip_algorithm=self.gradient_clip_algorithm)

    def _log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None, step_offset: int = 0) -> None:
        """Send metrics to every logger as Python numbers (this is where a host sync happens).

        Without an explicit ``step``, ``epoch`` is added and the step is ``batches_that_stepped`` (+ offset).
        """
        if not self.loggers or not metrics:
            return
        scalars = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        if step is None:
            step = scalars.pop("step", None)
        if step is None:
            scalars.setdefault("epoch", self.current_epoch)
            step = self._loop.batches_that_stepped + step_offset
        for logger in self.loggers:
            # no `logger.save()` here: loggers buffer and flush on their own interval; the trainer saves them
            # at epoch ends (a flush to disk every log interval costs more than the training step)
            logger.log_metrics(metrics=scalars, step=int(step))

    def _log_train_step(self) -> None:
        """Send the step's values to the loggers (the loop calls this every ``log_every_n_steps`` steps)."""
        _, log, _ = self._log.refresh(self)
        self._log_metrics(log)

    def _log_train_epoch(self) -> None:
        _, log, _ = self._log.refresh(self)
        # Lightning logs epoch-end training metrics at the step of the epoch's last batch
        self._log_metrics(log, step_offset=-1)
        for logger in self.loggers:
            logger.save()

    def _log_eval_step(self, stage: RunningStage, dataloader_idx: int) -> None:
        store = self._log.store
        if stage == RunningStage.SANITY_CHECKING or not self.loggers or not store.has_step_entries:
            return
        _, log, _ = self._log.refresh(self)
        # step-level evaluation metrics are logged against a per-dataloader batch counter of this loop
        counters = self._eval_step_counters.setdefault(stage, {})
        step = counters.get(dataloader_idx, 0)
        counters[dataloader_idx] = step + 1
        suffix = f"/dataloader_idx_{dataloader_idx}"
        if store.num_dataloaders > 1:
            log = {k: v for k, v in log.items() if k.endswith(suffix) or "/dataloader_idx_" not in k}
        self._log_metrics(log, step=step)

    def _log_eval_epoch(self, stage: RunningStage, num_dataloaders: int) -> list[dict[str, float]]:
        callback, log, _ = self._log.refresh(self)
        if stage == RunningStage.SANITY_CHECKING:
            return []
        self._log_metrics(dict(log))
        for logger in self.loggers:
            logger.save()
        results: list[dict[str, float]] = []
        for idx in range(num_dataloaders):
            suffix = f"/dataloader_idx_{idx}"
            out = {}
            for k, v in log.items():
                if "/dataloader_idx_" not in k or k.endswith(suffix):
                    out[k] = v.item() if isinstance(v, torch.Tensor) else v
            results.append(out)
        return results

    # ================================================================== data
    def _load_train_dataloader(self) -> None:
        if self.train_dataloader is not None and self._train_loaded_epoch is not None \
                and not self._should_reload_train_dl():
            return
        loaders = _data._request_dataloader(self, "train")
        if loaders is None:
            raise MisconfigurationException(
                "No training dataloader: pass `trainer.fit(model, train_dataloaders=...)`, a datamodule with "
                "`train_dataloader()`, or define `train_dataloader()` in your LightningModule."
            )
        if isinstance(loaders, (list, tuple, dict)):
            loaders = type(loaders)(
                {k: _data._prepare_loader(self, v, "train") for k, v in loaders.items()}
                if isinstance(loaders, dict) else [_data._prepare_loader(self, v, "train") for v in loaders])
        else:
            loaders = _data._prepare_loader(self, loaders, "train")
        self.train_dataloader = _data._combine_train(loaders)
        self._train_loaded_epoch = self._loop.epoch
        self._train_len = len(self.train_dataloader) if _data._has_len(self.train_dataloader) else float("inf")
        self.num_training_batches = _data._num_batches(self.train_dataloader, self.limit_train_batches,
                                                       "limit_train_batches")
        if self._train_len == 0 and self.limit_train_batches != 0:
            raise MisconfigurationException(
                "The training dataloader is empty (0 batches). Check the dataset's length, `batch_size` and "
                "`drop_last`, or pass `limit_train_batches=0` to skip training on purpose."
            )
        if isinstance(self.val_check_interval, int):
            self.val_check_batch = self.val_check_interval
            if self.val_check_batch > self.num_training_batches and self.check_val_every_n_epoch is not None:
                raise ValueError(
                    f"`val_check_interval` ({self.val_check_interval}) must be less than or equal to the number of "
                    f"the training batches ({self.num_training_batches}). If you want to disable validation set "
                    "`limit_val_batches` to 0.0 instead. If you want to validate based on the total training "
                    "batches, set `check_val_every_n_epoch=None`."
                )
        elif math.isinf(self.num_training_batches):
            self.val_check_batch = float("inf")
            if self.val_check_interval != 1.0:
                raise MisconfigurationException(
                    "When using an IterableDataset for the training dataloader, `Trainer(val_check_interval)` must "
                    "be `1.0` or an int. An int k specifies checking validation every k training batches."
                )
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * self.val_check_interval))

    def _should_reload_train_dl(self) -> bool:
        n = self.reload_dataloaders_every_n_epochs
        return bool(n) and self._train_loaded_epoch is not None and self._loop.epoch - self._train_loaded_epoch >= n

    def _load_eval_dataloaders(self, prefix: str) -> tuple[list, list]:
        raw = _data._request_dataloader(self, prefix)
        loaders = [_data._prepare_loader(self, dl, prefix) for dl in _data._as_list(raw)]
        limit = {"val": self.limit_val_batches, "test": self.limit_test_batches,
                 "predict": self.limit_predict_batches}[prefix]
        flag = {"val": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}[prefix]
        limits = [_data._num_batches(dl, limit, flag) for dl in loaders]
        if prefix == "val":
            self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
            self.num_val_batches = limits
        elif prefix == "test":
            self.test_dataloaders = loaders[0] if len(loaders) == 1 else loaders
            self.num_test_batches = limits
        else:
            self.predict_dataloaders = loaders[0] if len(loaders) == 1 else loaders
            self.num_predict_batches = limits
        return loaders, limits

    def _val_enabled(self) -> bool:
        """Validation runs if the module has a ``validation_step`` and ``limit_val_batches`` allows it
        (decided once per run: this is asked after every training batch)."""
        if self._val_on is None:
            from featherlight.trainer.dispatch import _module_overrides

            self._val_on = self.limit_val_batches != 0 and _module_overrides(self.lightning_module, "validation_step")
        return self._val_on

    def _ensure_val_loaders(self) -> bool:
        if self._val_loaders is None:
            self._val_loaders, self._val_limits = self._load_eval_dataloaders("val")
            self._val_loaded_epoch = self._loop.epoch
        return bool(self._val_loaders) and sum(self._val_limits) > 0

    def _run_sanity_check(self) -> None:
        from featherlight.trainer import eval_loop

        if self.num_sanity_val_steps == 0 or not self._val_enabled():
            return
        self.state.stage = RunningStage.SANITY_CHECKING
        self._dispatch.call("on_sanity_check_start")
        if self._ensure_val_loaders():
            steps = self.num_sanity_val_steps
            limits = [n if steps == -1 else min(n, steps) for n in self._val_limits]
            self.num_sanity_val_batches = limits
            eval_loop.run_evaluation(self, RunningStage.SANITY_CHECKING, self._val_loaders, limits)
        self._dispatch.call("on_sanity_check_end")
        # sanity-check values must not leak into the real run's metrics
        self._log.reset_results()
        self.state.stage = None

    def _run_validation_in_fit(self) -> None:
        from featherlight.trainer import eval_loop

        n = self.reload_dataloaders_every_n_epochs
        reload = None
        if n and self._val_loaded_epoch is not None and self._loop.epoch - self._val_loaded_epoch >= n:
            def reload() -> tuple[list, list]:
                self._val_loaders = None
                self._ensure_val_loaders()
                return self._val_loaders, self._val_limits
        elif not self._ensure_val_loaders():
            return
        from featherlight.utilities.seed import _collect_rng_states

        self._loop.val_start_rng = _collect_rng_states()  # an interrupted validation reruns from here
        eval_loop.run_evaluation(self, RunningStage.VALIDATING, self._val_loaders, self._val_limits, reload)

    def strategy_process_dataloader(self, loader: Any, prefix: str) -> Any:
        process = getattr(self.strategy, "process_dataloader", None)
        return process(loader, prefix, self) if process is not None else loader

    def _can_stop_early(self) -> bool:
        met_epochs = self._loop.epoch >= self.min_epochs if self.min_epochs else True
        met_steps = self._loop.global_step >= self.min_steps if self.min_steps else True
        return met_epochs and met_steps

    # ================================================================== checkpointing
    def _checkpoint_and_exit(self) -> None:
        """A signal asked the run to stop: save where it is (fit only) and leave with a non-zero status.

        With several processes every rank calls this at the same batch (see ``_signal_every``); they agree
        whether any of them was signalled, then all save and exit together."""
        from featherlight.trainer.interrupt import _save_and_raise

        if self._signal_every:
            import signal

            received = self.strategy.reduce_boolean_decision(self._signal_received is not None, all=False)
            if not received:
                return
            if self._signal_received is None:
                self._signal_received = int(signal.SIGTERM)
        _save_and_raise(self)

    def save_checkpoint(self, filepath: _PATH, weights_only: bool = False, storage_options: Optional[Any] = None) -> None:
        """Write a checkpoint of the current run to ``filepath`` atomically (temporary file, fsync, rename)."""
        if self.lightning_module is None:
            raise AttributeError(
                "Saving a checkpoint is only possible if a model is attached to the Trainer. Did you call "
                "`Trainer.save_checkpoint()` before calling `Trainer.{fit,validate,test,predict}`?"
            )
        from featherlight.trainer.checkpoint import _save_checkpoint

        _save_checkpoint(self, filepath, weights_only)

    # ================================================================== properties users read
    @property
    def current_epoch(self) -> int:
        """The current epoch, counted from 0 (the number of completed epochs)."""
        return self._loop.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (with several optimizers, every step of each counts)."""
        return self._loop.global_step

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
    def accelerator(self) -> str:
        return self.strategy.root_device.type

    @property
    def device_ids(self) -> list[int]:
        return getattr(self.strategy, "parallel_device_ids", [self.strategy.root_device.index or 0])

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
    def logger(self) -> Optional[Any]:
        """The first logger, or None."""
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Optional[Any]) -> None:
        self.loggers = [] if logger is None else [logger]

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
        self._log.refresh(self)
        return self._log.callback

    @property
    def logged_metrics(self) -> dict[str, Any]:
        """The values sent (or due) to the loggers."""
        self._log.refresh(self)
        return self._log.logged

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True``, as Python numbers."""
        self._log.refresh(self)
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in self._log.pbar.items()}

    @property
    def estimated_stepping_batches(self) -> Union[int, float]:
        """Total optimizer steps the fit will take, accounting for accumulation, limits and ``max_steps``."""
        if self.max_epochs == -1:
            return float("inf") if self.max_steps == -1 else self.max_steps
        if self.train_dataloader is None:
            rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
            self._load_train_dataloader()
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
        return self._loop.batch_idx + 1 >= self.num_training_batches

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
        return getattr(self, "_received_sigterm", False)


def _reorder_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """Tuner callbacks first, checkpoint callbacks last (they must see everything logged before them).

    Raises if two stateful callbacks share a ``state_key``: one state would overwrite the other.
    """
    from featherlight.callbacks.checkpoint import Checkpoint
    from featherlight.trainer.dispatch import _is_overridden

    first = [c for c in callbacks if getattr(c, "_is_tuner_callback", False)]
    last = [c for c in callbacks if isinstance(c, Checkpoint)]
    middle = [c for c in callbacks if c not in first and c not in last]
    seen: dict[str, Callback] = {}
    for cb in callbacks:
        if not _is_overridden(cb, "state_dict", Callback):
            continue
        if cb.state_key in seen:
            raise RuntimeError(
                f"Found more than one stateful callback of type `{type(cb).__name__}` with the same `state_key` "
                f"({cb.state_key!r}): their states would overwrite each other in checkpoints. Give them different "
                "settings (e.g. a different `monitor`/`every_n_epochs` for ModelCheckpoint) or make `state_key` unique."
            )
        seen[cb.state_key] = cb
    return first + middle + last


def _print_results(results: list[dict[str, float]], stage: str) -> None:
    """A plain table of the evaluation results (Lightning prints one too)."""
    if not results or not any(results):
        return
    keys = sorted({k for r in results for k in r})
    headers = [f"{stage} metric"] + [f"DataLoader {i}" for i in range(len(results))]
    rows = [[k] + [f"{r[k]:.10g}" if k in r else "" for r in results] for k in keys]
    widths = [max(len(h), *(len(row[i]) for row in rows)) + 4 for i, h in enumerate(headers)]
    line = "─" * sum(widths)
    out = [line, "".join(h.center(w) for h, w in zip(headers, widths)), line]
    out += ["".join(c.center(w) for c, w in zip(row, widths)) for row in rows]
    out.append(line)
    print("\n".join(out))
