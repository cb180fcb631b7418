"""Turning the Trainer's flags into objects, once: determinism, loggers, the profiler, the callbacks."""
from __future__ import annotations

import functools
import inspect
import os
from ast import literal_eval
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

import torch

from featherlight.callbacks.callback import Callback
from featherlight.callbacks.model_checkpoint import ModelCheckpoint
from featherlight.callbacks.model_summary import ModelSummary
from featherlight.callbacks.progress.progress_bar import ProgressBar
from featherlight.callbacks.progress.tqdm_progress import TQDMProgressBar
from featherlight.callbacks.timer import Timer
from featherlight.io.checkpoint_io import CheckpointIO
from featherlight.profilers import AdvancedProfiler, PassThroughProfiler, PyTorchProfiler, SimpleProfiler
from featherlight.trainer.run import order_callbacks
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import WarningCache, rank_zero_info, rank_zero_warn

_warnings = WarningCache()
_F = TypeVar("_F", bound=Callable[..., Any])


def env_defaults(cls: type) -> dict[str, Any]:
    """``PL_<CLASS>_<ARGUMENT>`` environment variables (Lightning's names, e.g. ``PL_TRAINER_MAX_STEPS=7``) as
    keyword arguments of ``cls``. A value is read as a Python literal (``7``, ``False``, ``"gpu"``), else as the
    string itself; an empty one is ignored."""
    out: dict[str, Any] = {}
    for name in inspect.signature(cls).parameters:
        value = os.environ.get(f"PL_{cls.__name__.upper()}_{name.upper()}")
        if value is None or value == "":
            continue
        try:
            out[name] = literal_eval(value)
        except Exception:  # not a literal (ValueError, SyntaxError, ...): the string itself, as Lightning does
            out[name] = value
    return out


def defaults_from_env_vars(init: _F) -> _F:
    """Decorate ``__init__``: arguments not passed explicitly take their ``PL_<CLASS>_<ARGUMENT>`` environment value
    (Lightning's ``_defaults_from_env_vars``). Explicit arguments always win."""
    accepted = inspect.signature(init).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        env = env_defaults(type(self))
        if not env:
            return init(self, *args, **kwargs)
        if args:  # a subclass may take positional arguments: name them so the environment cannot override them
            kwargs.update(zip(inspect.signature(type(self)).parameters, args))
        # only what this __init__ takes: a subclass's own arguments are not ours to pass on
        env = {k: v for k, v in env.items() if takes_any or k in accepted}
        return init(self, **{**env, **kwargs})

    return wrapped  # type: ignore[return-value]


def set_determinism(deterministic: Optional[Union[bool, str]], benchmark: Optional[bool]) -> tuple[Any, Any]:
    """Apply ``deterministic``/``benchmark`` to torch; returns the flags as the Trainer keeps them."""
    if deterministic not in (None, True, False, "warn"):
        raise MisconfigurationException(
            f"`deterministic={deterministic!r}` is invalid: use True, False or 'warn'."
        )
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
        rank_zero_warn("You passed `deterministic=True` and `benchmark=True`. Note that PyTorch ignores "
                       "torch.backends.cudnn.deterministic=True when torch.backends.cudnn.benchmark=True.")
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    return deterministic, benchmark


# what a logger's name given as a string most likely meant (`Trainer(logger="csv")`)
_LOGGER_NAMES = {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "tb": "TensorBoardLogger",
                 "wandb": "WandbLogger", "mlflow": "MLFlowLogger", "comet": "CometLogger", "neptune": "NeptuneLogger"}


def check_logger_flag(logger: Any) -> None:
    """``Trainer(logger=...)`` takes a logger, a list (any iterable) of loggers, True/None (the default logger) or
    False. ``logger`` is the flag with an iterable already made a list.

    Anything else fails here with a ``TypeError`` naming what to pass: a string (``logger="csv"``) would otherwise be
    iterated as one "logger" per character and fail much later with an ``AttributeError`` (in Lightning too); a
    logger class instead of an instance, or a number, likewise.
    """
    if logger is None or isinstance(logger, bool):
        return
    for item in logger if isinstance(logger, list) else [logger]:
        if isinstance(item, type) and hasattr(item, "log_metrics"):
            raise TypeError(
                f"`Trainer(logger=...)` got the class `{item.__name__}`, not a logger: create it, e.g. "
                f"`Trainer(logger={item.__name__}(save_dir=...))`."
            )
        # (a path has no `log_metrics` either; a mock logger may claim to be os.PathLike, so that is not asked)
        if isinstance(item, (str, bytes, bool, int, float)) or not hasattr(item, "log_metrics"):
            hint = ""
            if isinstance(item, str) and item.lower() in _LOGGER_NAMES:
                cls = _LOGGER_NAMES[item.lower()]
                hint = f" For {item!r}, pass `logger={cls}(save_dir=...)` (`from featherlight.loggers import {cls}`)."
            raise TypeError(
                "`Trainer(logger=...)` takes a Logger instance (e.g. `CSVLogger(save_dir=...)`, "
                "`TensorBoardLogger(save_dir=...)`), a list of them, True (the default logger) or False (no logging); "
                f"got {logger!r}.{hint}"
            )


def build_loggers(logger: Any, fast_dev_run: int, default_root_dir: str) -> list[Any]:
    """The loggers for ``Trainer(logger=...)``: TensorBoard (or CSV without tensorboard) by default.

    Raises ``TypeError`` for anything but a logger, loggers, a bool or None (see :func:`check_logger_flag`)."""
    if isinstance(logger, Iterable) and not isinstance(logger, (str, bytes)):
        logger = list(logger)  # once: a generator of loggers is read a single time
    check_logger_flag(logger)
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

            return [TensorBoardLogger(save_dir=default_root_dir)]
        from featherlight.loggers.csv_logs import CSVLogger

        _warnings.info(
            "`Trainer(logger=True)` uses the CSVLogger because `tensorboard` is not installed "
            "(`pip install tensorboard` to use the TensorBoardLogger)."
        )
        return [CSVLogger(save_dir=default_root_dir)]
    return list(logger) if isinstance(logger, list) else [logger]


def build_profiler(profiler: Any) -> Any:
    """The profiler for ``Trainer(profiler=...)``: a name, an instance, or None (a pass-through one)."""
    if profiler is None:
        out = PassThroughProfiler()
    elif isinstance(profiler, str):
        choices = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler,
                   "passthrough": PassThroughProfiler}
        cls = choices.get(profiler.lower())
        if cls is None:
            raise MisconfigurationException(
                f"When passing string value for the `profiler` parameter of `Trainer`, it can only be one of "
                f"{sorted(choices)}, got {profiler!r}."
            )
        out = cls()
    else:
        out = profiler
    return out


def build_callbacks(user: list[Callback], *, enable_checkpointing: bool, enable_progress_bar: bool,
                    enable_model_summary: bool, max_time: Any, explicit: dict) -> list[Callback]:
    """The user's callbacks plus the defaults the flags ask for (summary, progress bar, timer, checkpointing)."""
    callbacks = list(user)
    has = lambda cls: any(isinstance(c, cls) for c in callbacks)  # noqa: E731
    if has(ModelCheckpoint) and explicit["enable_checkpointing"] is False:
        raise MisconfigurationException(
            "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks "
            "list. Remove the callback or set `enable_checkpointing=True`."
        )
    bars = [c for c in callbacks if isinstance(c, ProgressBar)]
    if len(bars) > 1:
        raise MisconfigurationException(
            "You added multiple progress bar callbacks to the Trainer, but currently only one progress bar is "
            f"supported. (Found {', '.join(type(b).__name__ for b in bars)}: keep one of them.)"
        )
    if bars and explicit["enable_progress_bar"] is False:
        raise MisconfigurationException(
            f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` in "
            "callbacks list. Remove the callback or set `enable_progress_bar=True`."
        )
    if enable_model_summary and not has(ModelSummary):
        callbacks.append(ModelSummary(max_depth=1))
    if enable_progress_bar and not has(ProgressBar):
        callbacks.append(TQDMProgressBar())
    if max_time is not None:
        callbacks.append(Timer(duration=max_time, interval="step"))
    if enable_checkpointing and not has(ModelCheckpoint):
        callbacks.append(ModelCheckpoint())
    return order_callbacks(callbacks)


# ---------------------------------------------------------------------------------------- checks of Trainer flags
def check_barebones(**flags: Any) -> None:
    """``barebones=True`` turns off everything that costs speed: asking for one of them too is a contradiction."""
    for flag, value in flags.items():
        if value not in (None, False, 0):
            raise ValueError(
                f"`Trainer(barebones=True, {flag}={value!r})` was passed, but barebones mode turns "
                f"{flag} off because it costs speed. Remove `{flag}` or set `barebones=False`."
            )
    rank_zero_info(
        "You are running in `Trainer(barebones=True)` mode: checkpointing, the progress bar, the model "
        "summary, logging (`self.log` is a no-op), sanity checking, fast_dev_run, anomaly detection and "
        "profiling are off."
    )


def check_validation_schedule(check_val_every_n_epoch: Any, val_check_interval: Any) -> None:
    if check_val_every_n_epoch is not None and (not isinstance(check_val_every_n_epoch, int)
                                                or isinstance(check_val_every_n_epoch, bool)):
        raise MisconfigurationException(
            f"`check_val_every_n_epoch` should be an integer, found {check_val_every_n_epoch!r}. Pass a positive "
            "int, or None to validate by `val_check_interval` training batches across epochs."
        )
    if check_val_every_n_epoch is not None and check_val_every_n_epoch < 1:
        raise MisconfigurationException(
            f"`check_val_every_n_epoch` must be a positive int or None, got {check_val_every_n_epoch!r}."
        )
    if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool) and val_check_interval == 0:
        # an int counts training batches between validations: 0 would fail with a ZeroDivisionError after the
        # first step (Lightning accepts it here); negative ints are refused by `check_limit`
        raise MisconfigurationException(
            "`val_check_interval=0` is invalid: an int is the number of training batches between validations "
            "and must be at least 1. Pass e.g. `val_check_interval=100`, a fraction of the epoch such as "
            "`val_check_interval=0.25`, or `limit_val_batches=0` to turn validation off."
        )
    if check_val_every_n_epoch is None and isinstance(val_check_interval, float):
        raise MisconfigurationException(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`. Pass the "
            "number of training batches between validations as an int."
        )


def check_reload_every(reload_dataloaders_every_n_epochs: Any) -> None:
    if not isinstance(reload_dataloaders_every_n_epochs, int) or isinstance(reload_dataloaders_every_n_epochs, bool) \
            or reload_dataloaders_every_n_epochs < 0:
        raise MisconfigurationException(
            f"`reload_dataloaders_every_n_epochs` should be an int >= 0, got {reload_dataloaders_every_n_epochs}."
        )


def check_optimisation(accumulate_grad_batches: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any) -> None:
    if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
        raise MisconfigurationException(
            f"`accumulate_grad_batches` must be a positive int, got {accumulate_grad_batches!r}."
        )
    if gradient_clip_val is not None and (not isinstance(gradient_clip_val, (int, float))
                                          or isinstance(gradient_clip_val, bool)):
        raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {gradient_clip_val}.")
    if gradient_clip_algorithm is not None and gradient_clip_algorithm.lower() not in ("norm", "value"):
        raise MisconfigurationException(
            f"`gradient_clip_algorithm` {gradient_clip_algorithm} is invalid. Allowed algorithms: ['value', 'norm']."
        )


def split_plugins(plugins: Any, precision: Any) -> tuple[Any, Optional[CheckpointIO]]:
    """``Trainer(plugins=...)``: at most one precision plugin and one checkpoint IO plugin, returned in that order."""
    plugin_list = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
    precision_plugins = [p for p in plugin_list if hasattr(p, "optimizer_step")]
    checkpoint_ios = [p for p in plugin_list if isinstance(p, CheckpointIO)]
    unknown = [p for p in plugin_list if not hasattr(p, "optimizer_step") and not isinstance(p, CheckpointIO)]
    if unknown or len(precision_plugins) > 1 or len(checkpoint_ios) > 1:
        raise MisconfigurationException(
            "`Trainer(plugins=...)` accepts one precision plugin (e.g. `MixedPrecision(...)`) and one checkpoint IO "
            f"plugin (a `CheckpointIO`, e.g. `AsyncCheckpointIO()`); got {[type(p).__name__ for p in plugin_list]}."
        )
    precision_plugin = precision_plugins[0] if precision_plugins else None
    if precision_plugin is not None and precision is not None:
        raise MisconfigurationException(
            "Received both `precision=` and a precision plugin in `plugins=`. Choose one of them."
        )
    return precision_plugin, (checkpoint_ios[0] if checkpoint_ios else None)
