"""``LightningCLI``: a command line and config-file front end for the Trainer, built on jsonargparse.

``featherlight.pytorch.cli`` is this module (``from lightning.pytorch.cli import LightningCLI`` becomes
``from featherlight.pytorch.cli import LightningCLI``). A program such as::

    from featherlight.cli import LightningCLI
    from my_project import MyModel, MyDataModule

    if __name__ == "__main__":
        LightningCLI(MyModel, MyDataModule)

gets ``fit``/``validate``/``test``/``predict`` subcommands whose options come from the type hints and
docstrings of ``Trainer.__init__`` (``--trainer.*``), of the model's and datamodule's ``__init__``
(``--model.*``, ``--data.*``) and of the Trainer method (``--ckpt_path``); YAML/JSON ``--config`` files;
``--print_config``; optimizers and schedulers chosen on the command line (``--optimizer Adam
--optimizer.lr 0.01``); and a ``config.yaml`` saved next to the logs that reproduces the run.

jsonargparse is an optional dependency (``pip install 'featherlight[cli]'``); it is imported only when this
module is, never by ``import featherlight``.
"""
import importlib
import importlib.util
import inspect
import os
import sys
import typing
from collections.abc import Iterable
from contextlib import contextmanager
from functools import partial, update_wrapper
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import torch
import yaml
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

_MIN_JSONARGPARSE = (4, 39)
_INSTALL_HINT = "pip install 'featherlight[cli]'"

try:
    import jsonargparse
    from jsonargparse import (
        ActionConfigFile,
        ArgumentParser,
        Namespace,
        class_from_function,
        register_unresolvable_import_paths,
        set_parsing_settings,
    )
except ImportError as _err:  # the message names the extra; the original error stays attached as the cause
    raise ImportError(
        f"featherlight's LightningCLI is built on jsonargparse, which is not installed ({_err}). Install the "
        f"`cli` extra: {_INSTALL_HINT}"
    ) from _err


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(getattr(jsonargparse, "__version__", "0")) < _MIN_JSONARGPARSE:
    raise ImportError(
        f"featherlight's LightningCLI needs jsonargparse>={'.'.join(map(str, _MIN_JSONARGPARSE))}, found "
        f"{jsonargparse.__version__}. Upgrade it: {_INSTALL_HINT} --upgrade"
    )

try:  # docstrings become help texts; without docstring-parser (the `signatures` extra) help has no descriptions
    import docstring_parser
except ImportError:  # pragma: no cover - the `cli` extra installs it
    docstring_parser = None  # type: ignore[assignment]

from featherlight.__about__ import __version__
from featherlight._logo import cli_lightning_logo
from featherlight.callbacks.callback import Callback
from featherlight.core.datamodule import LightningDataModule
from featherlight.core.mixins.hparams_mixin import _given_hparams
from featherlight.core.module import LightningModule
from featherlight.trainer.trainer import Trainer
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_warn
from featherlight.utilities.seed import seed_everything

# torch defines some callables whose `__module__` is None (e.g. `torch.nn.functional` builtins re-exported on
# `torch`); registering torch lets jsonargparse write them back as `torch.<name>` in a dumped config.
register_unresolvable_import_paths(torch)
if importlib.util.find_spec("fsspec") is not None:
    # `--config s3://bucket/run.yaml` and other fsspec URLs, as Lightning allows
    set_parsing_settings(config_read_mode_fsspec_enabled=True)

__all__ = [
    "ArgsType",
    "LRSchedulerCallable",
    "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion",
    "LightningArgumentParser",
    "LightningCLI",
    "OptimizerCallable",
    "ReduceLROnPlateau",
    "SaveConfigCallback",
    "cli_lightning_logo",
    "instantiate_class",
    "instantiate_module",
]

ModuleType = TypeVar("ModuleType")

# The string LightningCLI records in hparams (`_instantiator`) for modules it built, so `load_from_checkpoint`
# rebuilds them through :func:`instantiate_module`.
_INSTANTIATOR_PATH = "featherlight.cli.instantiate_module"


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` plus the name of the metric it follows.

    ``--lr_scheduler ReduceLROnPlateau --lr_scheduler.monitor val_loss`` selects this class; the CLI's automatic
    ``configure_optimizers`` then returns ``{"scheduler": ..., "monitor": monitor}`` so the Trainer steps it on
    that metric.

    Args:
        optimizer: the optimizer whose learning rate is reduced.
        monitor: the logged metric (``self.log`` name) to follow.
        *args: torch's ``ReduceLROnPlateau`` arguments (``mode``, ``factor``, ``patience``...).
        **kwargs: torch's ``ReduceLROnPlateau`` arguments by name.
    """

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


# The scheduler base classes the CLI accepts. torch's own ReduceLROnPlateau is an LRScheduler too, but only the
# class above knows which metric to follow, so it is the one the automatic `configure_optimizers` supports.
LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]

# Type hints for programs built on the CLI.
#: What ``LightningCLI(args=...)`` accepts: command-line style strings, or an already structured config.
ArgsType = Optional[Union[list[str], dict[str, Any], Namespace]]
#: An ``__init__`` argument typed with this takes an optimizer *class and its arguments* from the config
#: (``--model.optimizer Adam --model.optimizer.lr 0.01``) and receives a callable ``params -> Optimizer``.
OptimizerCallable = Callable[[Iterable], Optimizer]
#: Like :data:`OptimizerCallable`, for a scheduler: a callable ``optimizer -> scheduler``.
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]

_LIGHTNING_CLASSES = (Trainer, LightningModule, LightningDataModule, Callback)


def _load_builtin_classes() -> None:
    """Import featherlight's built-in callbacks, loggers, profilers and strategies.

    jsonargparse resolves a short class name (``--trainer.callbacks=EarlyStopping``,
    ``--trainer.logger=CSVLogger``) among the subclasses Python has already loaded; featherlight loads these
    lazily, so the CLI loads them once here (a few milliseconds, no optional dependency).
    """
    import featherlight.callbacks as callbacks
    import featherlight.loggers  # noqa: F401
    import featherlight.profilers  # noqa: F401
    import featherlight.strategies as strategies

    for package in (callbacks, strategies):
        for name in package.__all__:
            try:
                getattr(package, name)
            except ImportError:  # a class whose optional dependency is missing cannot be chosen anyway
                pass


class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ``ArgumentParser`` with helpers for featherlight's classes, optimizers and schedulers.

    Environment variables are read only with ``default_env=True``; their names start with ``env_prefix``
    (``PL_FIT__TRAINER__MAX_EPOCHS``, as in Lightning). Every other argument is jsonargparse's.
    """

    def __init__(
        self,
        *args: Any,
        description: str = "featherlight Trainer command line tool",
        env_prefix: str = "PL",
        default_env: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        #: nested keys of the callbacks added with ``add_lightning_class_args``; the CLI gives them to the Trainer
        self.callback_keys: list[str] = []
        # nested key -> (class or tuple of classes, link_to); kept apart so the CLI knows which were added
        self._optimizers: dict[str, tuple[Union[type, tuple[type, ...]], str]] = {}
        self._lr_schedulers: dict[str, tuple[Union[type, tuple[type, ...]], str]] = {}

    def parse_args(self, args: Optional[Any] = None, *rest: Any, **kwargs: Any) -> Namespace:  # type: ignore[override]
        # remembered so that an error can name the --config file a bad key came from
        self._given_args = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Optional[Exception] = None) -> "typing.NoReturn":
        """Report a parse error: the key, the config file it came from, and what is accepted there.

        jsonargparse prints the whole usage (one line per option, easily a hundred) above the message; a CLI
        user needs the message, so only it, the hints and the ``--help`` tip are printed. With
        ``exit_on_error=False`` jsonargparse raises its own message (inner parsers do too); with a custom error
        handler or ``JSONARGPARSE_DEBUG`` set, jsonargparse's behaviour applies, with the hints added.
        """
        parser = getattr(ex, "subcommand_parser", None) or self
        hints = []
        # jsonargparse parses a class's arguments with inner parsers (exit_on_error=False) whose errors end up in
        # this message; the hints are added once, by the parser that reports it
        if self.exit_on_error:
            try:
                hints = _ErrorHints(self, parser, message).lines()
            except Exception:  # a hint must never hide the error itself
                hints = []
        if hints:
            message = message.rstrip() + "\n" + "\n".join(f"  {line}" for line in hints)
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in {"", "false", "no", "0"}
        if not self.exit_on_error or debug or callable(getattr(self, "_error_handler", None)):
            super().error(message, ex)
        logger = getattr(self, "_logger", None)
        if logger is not None:
            logger.error(message)
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {message}\ntip: for the accepted options run: {prog} --help\n")
        self.exit(2)

    def add_lightning_class_args(
        self,
        lightning_class: Union[Callable[..., Any], type],
        nested_key: Optional[str],
        subclass_mode: bool = False,
        required: bool = True,
    ) -> list[str]:
        """Add the ``__init__`` arguments of a Trainer, LightningModule, LightningDataModule or Callback class (or
        of a function that returns one) under ``--<nested_key>.*``.

        Args:
            lightning_class: the class, or a function whose return annotation is one of those classes.
            nested_key: the group name (``"model"`` gives ``--model.*``).
            subclass_mode: accept any subclass, chosen with ``--<nested_key> ClassName`` / ``class_path``.
            required: in subclass mode, whether a class must be given.

        Returns:
            The names of the arguments added.

        Raises:
            MisconfigurationException: for anything else than those classes.
        """
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, _LIGHTNING_CLASSES)):
            raise MisconfigurationException(
                f"Cannot add arguments from {lightning_class!r} under {nested_key!r}: give a subclass of Trainer, "
                "LightningModule, LightningDataModule or Callback, or a function annotated to return one."
            )
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)  # type: ignore[arg-type]
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        added = self.add_class_arguments(
            lightning_class,
            nested_key,
            fail_untyped=False,
            # the Trainer is built by the CLI itself (it adds callbacks first); the others by jsonargparse
            instantiate=not issubclass(lightning_class, Trainer),
            sub_configs=True,
        )
        self._tuple_defaults_as_lists(nested_key)
        return added

    def _tuple_defaults_as_lists(self, nested_key: Optional[str]) -> None:
        """A tuple default of a non-tuple type (``interrupt_signals=("SIGTERM",)``) becomes a list: a saved config
        holds a list, so only then does the parsed config equal the one read back from ``config.yaml``."""
        prefix = f"{nested_key}." if nested_key else ""
        defaults = {}
        for action in self._actions:
            if not action.dest.startswith(prefix) or not isinstance(action.default, tuple):
                continue
            typehint = getattr(action, "_typehint", None)
            if typing.get_origin(typehint) is tuple or typehint is tuple:
                continue
            defaults[action.dest] = list(action.default)
        if defaults:
            self.set_defaults(defaults)

    def add_optimizer_args(
        self,
        optimizer_class: Union[type[Optimizer], tuple[type[Optimizer], ...]] = (Optimizer,),
        nested_key: str = "optimizer",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add an optimizer's arguments (all but ``params``) under ``--<nested_key>.*``.

        Args:
            optimizer_class: one optimizer class (its arguments directly), or a tuple of base classes (any
                subclass, chosen with ``--<nested_key> Adam``).
            nested_key: the group name.
            link_to: ``"AUTOMATIC"``: the CLI builds the optimizer in the model's ``configure_optimizers``.
                Otherwise the dotted key (``"model.optimizer_config"``) that receives
                ``{"class_path": ..., "init_args": ...}``, for :func:`instantiate_class`.
        """
        _check_classes(optimizer_class, (Optimizer,), "add_optimizer_args", "a torch.optim.Optimizer subclass")
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"params"}}
        if isinstance(optimizer_class, tuple):
            self.add_subclass_arguments(optimizer_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(optimizer_class, nested_key, sub_configs=True, **kwargs)
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(
        self,
        lr_scheduler_class: Union[LRSchedulerType, tuple[LRSchedulerType, ...]] = LRSchedulerTypeTuple,
        nested_key: str = "lr_scheduler",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add a learning-rate scheduler's arguments (all but ``optimizer``) under ``--<nested_key>.*``.

        Args:
            lr_scheduler_class: one scheduler class, or a tuple of base classes (any subclass).
            nested_key: the group name.
            link_to: ``"AUTOMATIC"`` or the dotted key that receives the ``class_path``/``init_args`` dict.
        """
        _check_classes(
            lr_scheduler_class,
            LRSchedulerTypeTuple,
            "add_lr_scheduler_args",
            "a torch.optim.lr_scheduler.LRScheduler subclass or featherlight.cli.ReduceLROnPlateau",
        )
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"optimizer"}}
        if isinstance(lr_scheduler_class, tuple):
            self.add_subclass_arguments(lr_scheduler_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(lr_scheduler_class, nested_key, sub_configs=True, **kwargs)
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)


def _check_classes(given: Any, bases: tuple[type, ...], method: str, accepted: str) -> None:
    classes = given if isinstance(given, tuple) else (given,)
    wrong = [c for c in classes if not (isinstance(c, type) and issubclass(c, bases))]
    if wrong or not classes:
        raise ValueError(f"{method}() got {wrong or given!r}; it takes {accepted}, or a tuple of them.")


class _ErrorHints:
    """Lines that explain a jsonargparse error: the config file, a close match, the accepted keys or type."""

    def __init__(self, main: ArgumentParser, parser: ArgumentParser, message: str) -> None:
        self.main = main
        self.parser = parser
        self.message = message
        # the subcommand the error is in, if any (its keys sit under `fit:` in a config given before it)
        self.subcommand = getattr(parser, "subcommand", None) if parser is not main else None

    def lines(self) -> list[str]:
        import re

        msg = self.message
        found = re.search(r"Subcommand '([^']+)' does not accept option '([^']+)'", msg)
        if found:
            self.subcommand = found.group(1)
            return self._unknown_key(found.group(2))
        found = re.search(r"Group '([^']+)' does not accept option '([^']+)'", msg)
        if found:
            return self._unknown_key(f"{found.group(1)}.{found.group(2)}")
        found = re.search(r"^Option '([^']+)' is not accepted", msg)
        if found:
            return self._unknown_key(found.group(1))
        found = re.search(r"Unrecognized arguments: --?([\w.]+)", msg)
        if found:
            return self._unknown_key(found.group(1), from_files=False)
        found = re.search(r'Parser key "([^"]+)"', msg)
        if found and found.group(1) not in ("config",):
            return self._bad_value(found.group(1))
        return []

    # ------------------------------------------------------------------------------------------------ keys
    def _keys(self) -> list[str]:
        return [a.dest for a in self.parser._actions if a.dest not in ("help", "==SUPPRESS==")]

    def _unknown_key(self, key: str, from_files: bool = True) -> list[str]:
        import difflib

        hints = []
        source = self._source(key) if from_files else None
        if source:
            hints.append(f"the key `{key}` comes from {source}")
        group, _, leaf = key.rpartition(".")
        keys = self._keys()
        siblings = sorted({k[len(group) + 1:].split(".")[0] for k in keys if group and k.startswith(group + ".")})
        if not siblings:  # an unknown group (or a top-level key): compare with the top-level names
            group, leaf = "", key.split(".")[0]
            siblings = sorted({k.split(".")[0] for k in keys})
        close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
        if close:
            hints.append("did you mean: " + ", ".join(f"{group + '.' if group else ''}{c}" for c in close) + "?")
        if siblings:
            where = f"under `{group}`" if group else "at the top level"
            hints.append(f"accepted {where}: " + ", ".join(siblings))
        return hints

    # ---------------------------------------------------------------------------------------------- values
    def _bad_value(self, key: str) -> list[str]:
        import difflib
        import re

        hints = []
        source = self._source(key)
        if source:
            hints.append(f"the value of `{key}` comes from {source}")
        action = next((a for a in self.parser._actions if a.dest == key), None)
        typehint = getattr(action, "_typehint", None)
        bad_option = re.search(
            r"Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted", self.message
        )
        missing_class = re.search(r"class_path '([^']+)'|dot import path string: (\S+)", self.message)
        if bad_option:
            accepted = _init_parameters(bad_option.group(1))
            if accepted:
                close = difflib.get_close_matches(bad_option.group(2), accepted, n=3, cutoff=0.6)
                if close:
                    hints.append("did you mean: " + ", ".join(close) + "?")
                hints.append(f"{bad_option.group(1)} accepts: " + ", ".join(accepted))
        elif missing_class and typehint is not None:
            names = _subclass_names(typehint)
            wanted = (missing_class.group(1) or missing_class.group(2)).rsplit(".", 1)[-1]
            close = difflib.get_close_matches(wanted, sorted(names), n=3, cutoff=0.6)
            if close:
                hints.append("did you mean: " + ", ".join(names[c] for c in close) + "?")
            elif names:
                hints.append("known classes: " + ", ".join(sorted(names)))
        if typehint is not None:
            hints.append(f"`{key}` accepts: {_type_text(typehint)}")
        return hints

    # --------------------------------------------------------------------------------------------- sources
    def _source(self, key: str) -> Optional[str]:
        """The last config file (or --config string) that sets ``key``: the one whose value was used."""
        candidates = [key] + ([f"{self.subcommand}.{key}"] if self.subcommand else [])
        found = None
        for label, data in self._config_sources():
            if any(_has_key(data, k) for k in candidates):
                found = label
        return found

    def _config_sources(self) -> list[tuple[str, Any]]:
        sources = []
        for parser in (self.main, self.parser):
            for pattern in getattr(parser, "default_config_files", None) or []:
                import glob

                for path in sorted(glob.glob(os.path.expanduser(str(pattern)))):
                    sources.append((f"the default config file {path}", path))
        args = getattr(self.main, "_given_args", [])
        for i, arg in enumerate(args):
            value = None
            if arg in ("-c", "--config") and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("--config="):
                value = arg[len("--config="):]
            if value is not None:
                is_file = os.path.isfile(value)
                sources.append((f"the config file {value}" if is_file else "a --config string", value))
        loaded = []
        for label, value in sources:
            try:
                if os.path.isfile(value):
                    with open(value) as f:
                        data = yaml.safe_load(f)
                else:
                    data = yaml.safe_load(value)
            except Exception:
                continue
            loaded.append((label, data))
        return loaded


def _has_key(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if isinstance(data, dict) and "init_args" in data and part not in data:
            data = data["init_args"]  # `model: {class_path: ..., init_args: {...}}`
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _init_parameters(class_path: str) -> list[str]:
    try:
        cls = _import_class(class_path)
        params = inspect.signature(cls).parameters.values()
    except Exception:
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _subclass_names(typehint: Any) -> dict[str, str]:
    """Short name -> import path of the loaded subclasses of the classes in ``typehint``."""
    bases = [t for t in _flatten_type(typehint) if isinstance(t, type) and t not in (type(None), str, int, bool)]
    names: dict[str, str] = {}
    todo = list(bases)
    while todo:
        cls = todo.pop()
        if cls.__name__.startswith("_"):
            continue
        names.setdefault(cls.__name__, _import_path(cls))
        todo.extend(cls.__subclasses__())
    return names


def _import_path(cls: type) -> str:
    try:  # the shortest public path (featherlight.callbacks.EarlyStopping), as jsonargparse writes it
        from jsonargparse._util import get_import_path

        return get_import_path(cls) or f"{cls.__module__}.{cls.__qualname__}"
    except Exception:
        return f"{cls.__module__}.{cls.__qualname__}"


def _flatten_type(typehint: Any) -> list[Any]:
    args = typing.get_args(typehint)
    if not args:
        return [typehint]
    return [t for arg in args for t in _flatten_type(arg)]


def _type_text(typehint: Any) -> str:
    text = getattr(typehint, "__name__", None) if isinstance(typehint, type) else None
    text = text or str(typehint)
    for noise in ("typing.", "collections.abc.", "<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("NoneType", "null")


class SaveConfigCallback(Callback):
    """Write the parsed config to ``<trainer.log_dir>/config.yaml`` when the first Trainer stage sets up.

    The file holds every value (``None`` included), so ``--config config.yaml`` reproduces the run. It is written
    on global rank zero only; every rank learns whether it already existed, and then all of them stop, unless
    ``overwrite=True`` (a second run in the same directory would otherwise silently lose the first one's config).

    Subclass it and override :meth:`save_config` to save the config elsewhere too (e.g. to a logger); pass
    ``save_to_log_dir=False`` to skip the file.

    Args:
        parser: the parser that parsed ``config`` (it writes the file).
        config: the parsed configuration.
        config_filename: the file name inside the log dir.
        overwrite: replace an existing file instead of stopping.
        multifile: when the config came from several files, keep that structure.
        save_to_log_dir: write the file (``False`` only makes sense with an overridden :meth:`save_config`).

    Raises:
        ValueError: for ``save_to_log_dir=False`` without an overridden :meth:`save_config`.
        RuntimeError: at setup, if the file exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Namespace,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
    ) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError(
                "`save_to_log_dir=False` only makes sense when subclassing SaveConfigCallback to implement "
                "`save_config`: with neither, the config would be saved nowhere. Pass `save_config_callback=None` "
                "to LightningCLI to not save it at all."
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:  # fit then test in one program: the config is saved once
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir  # agreed on by every rank when the run started
            if log_dir is None:
                raise RuntimeError("SaveConfigCallback needs `trainer.log_dir`; the Trainer has none.")
            config_path = os.path.join(log_dir, self.config_filename)
            fs = _filesystem(log_dir)
            if not self.overwrite:
                exists = bool(fs.isfile(config_path)) if trainer.is_global_zero else False
                # every rank stops together; rank zero alone raising would leave the others waiting
                if trainer.strategy.broadcast(exists):
                    raise RuntimeError(
                        f"{type(self).__name__} expected {config_path} to NOT exist. Aborting to avoid overwriting "
                        "the results of a previous run. Delete that file, use another log dir (e.g. "
                        "--trainer.default_root_dir), set `LightningCLI(save_config_callback=None)` to not save "
                        'the config, or `LightningCLI(save_config_kwargs={"overwrite": True})` to overwrite it.'
                    )
            if trainer.is_global_zero:
                # the logger usually creates the directory when it first logs, which has not happened yet
                fs.makedirs(log_dir, exist_ok=True)
                self.parser.save(
                    self.config, config_path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
                )
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # the other ranks learn it too, so a later stage's setup skips on every rank alike
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Override to save the config somewhere else as well; called on global rank zero only.

        Since only rank zero calls it, it must not run a collective (every other rank would hang waiting for it).
        Example::

            def save_config(self, trainer, pl_module, stage):
                text = self.parser.dump(self.config, skip_none=False)
                trainer.logger.log_hyperparams({"config": text})
        """


class _LocalFS:
    """The two filesystem calls SaveConfigCallback makes, for a local directory (no fsspec needed)."""

    @staticmethod
    def isfile(path: str) -> bool:
        return os.path.isfile(path)

    @staticmethod
    def makedirs(path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)


def _filesystem(path: str) -> Any:
    if "://" not in str(path):
        return _LocalFS()
    try:
        import fsspec
    except ImportError as err:
        raise ImportError(
            f"The log dir {path!r} is a URL; saving the config there needs fsspec: pip install fsspec"
        ) from err
    return fsspec.url_to_fs(str(path))[0]


class LightningCLI:
    """A command line tool for a model, a datamodule and the Trainer: parse, build, run.

    ``LightningCLI(MyModel, MyDataModule)`` reads the command line (or ``args``), builds the datamodule, the model
    and the Trainer from it, and, unless ``run=False``, runs the chosen subcommand (``fit``, ``validate``,
    ``test``, ``predict``: the Trainer method of that name, with its own options such as ``--ckpt_path``).
    Afterwards ``cli.config`` holds the parsed config, ``cli.config_init`` the built objects, and ``cli.model``,
    ``cli.datamodule``, ``cli.trainer`` the objects themselves.

    Subclass it to add arguments (:meth:`add_arguments_to_parser`: ``parser.link_arguments``,
    ``parser.add_lightning_class_args``, ``parser.add_optimizer_args``...), to run code around the
    subcommands (``before_fit``/``after_fit``...), or to change the subcommands (:meth:`subcommands`).

    Args:
        model_class: a LightningModule class, or a function returning one. ``None``: any LightningModule subclass,
            chosen with ``--model ClassName``.
        datamodule_class: a LightningDataModule class, or a function returning one. ``None``: optional, any
            subclass with ``--data ClassName``.
        save_config_callback: the callback class that saves the config to the log dir; ``None`` to not save it.
        save_config_kwargs: its keyword arguments (``{"overwrite": True}``, ``{"config_filename": ...}``).
        trainer_class: the Trainer class, or a function returning a Trainer.
        trainer_defaults: default Trainer arguments (still overridable from the command line), except
            ``callbacks``: those are always added and are not configurable.
        seed_everything_default: the default of ``--seed_everything``: an int, ``True`` (take the seed from
            ``PL_GLOBAL_SEED``, else 0, and record it in the config) or ``False`` (do not seed).
        parser_kwargs: keyword arguments for every parser (``{"default_env": True}``,
            ``{"parser_mode": "omegaconf"}``...); a key named like a subcommand (``{"fit": {...}}``) gives that
            subcommand's parser its own.
        parser_class: the parser class (a :class:`LightningArgumentParser` subclass).
        subclass_mode_model: accept any subclass of ``model_class`` (``--model ClassName`` / ``class_path``).
        subclass_mode_data: accept any subclass of ``datamodule_class``.
        args: parse these instead of ``sys.argv[1:]``: command-line style strings, or a dict/Namespace config.
        run: ``True``: subcommands, and the chosen one runs. ``False``: no subcommands; parse and build only.
        auto_configure_optimizers: add ``--optimizer``/``--lr_scheduler`` and, when one is given, replace the
            model's ``configure_optimizers`` with one that builds them.
        load_from_checkpoint_support: the model's and datamodule's ``save_hyperparameters()`` record the parsed
            config, so ``load_from_checkpoint`` rebuilds class-typed and callable arguments (``class_path``
            entries, ``OptimizerCallable``) as the CLI built them.
    """

    def __init__(
        self,
        model_class: Optional[Union[type[LightningModule], Callable[..., LightningModule]]] = None,
        datamodule_class: Optional[Union[type[LightningDataModule], Callable[..., LightningDataModule]]] = None,
        save_config_callback: Optional[type[SaveConfigCallback]] = SaveConfigCallback,
        save_config_kwargs: Optional[dict[str, Any]] = None,
        trainer_class: Union[type[Trainer], Callable[..., Trainer]] = Trainer,
        trainer_defaults: Optional[dict[str, Any]] = None,
        seed_everything_default: Union[bool, int] = True,
        parser_kwargs: Optional[Union[dict[str, Any], dict[str, dict[str, Any]]]] = None,
        parser_class: type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers

        # `model_class`/`datamodule_class` keep what the user gave; the underscored ones are what is registered
        self.model_class = model_class
        self._model_class = model_class or LightningModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data
        self._object_trainer_defaults: dict[str, Any] = {}

        _load_builtin_classes()
        main_kwargs, subcommand_kwargs = self._split_parser_kwargs(self.parser_kwargs)
        self.setup_parser(run, main_kwargs, subcommand_kwargs)
        self.parse_arguments(self.parser, args)
        self._parse_ckpt_path()

        self.subcommand: Optional[str] = self.config["subcommand"] if run else None
        self._set_seed()
        if load_from_checkpoint_support:
            self._add_instantiators()

        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()

        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------------------------------------ parser
    def _split_parser_kwargs(self, parser_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        names = self.subcommands()
        main = {k: v for k, v in parser_kwargs.items() if k not in names}
        per_subcommand = {k: v for k, v in parser_kwargs.items() if k in names}
        return main, per_subcommand

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Create a parser (the main one, and one per subcommand) with the ``-c/--config`` option."""
        kwargs.setdefault("dump_header", [f"featherlight=={__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile,
            help="Path to a configuration file in json or yaml format (repeat to merge several, in order).",
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Create ``self.parser`` with either the subcommands or, for ``run=False``, the arguments directly."""
        self.parser = self.init_parser(**main_kwargs)
        if add_subcommands:
            self._subcommand_method_arguments: dict[str, list[str]] = {}
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the arguments every featherlight CLI has besides the classes' (``--seed_everything``)."""
        parser.add_argument(
            "--seed_everything",
            type=Union[bool, int],
            default=self.seed_everything_default,
            help=(
                "An int: seed_everything(value) before the classes are built. True: the seed in PL_GLOBAL_SEED "
                "(0 if unset), recorded in the saved config. False: do not seed."
            ),
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--trainer.*``, ``--model.*`` and ``--data.*``."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        # `callbacks` defaults are added when the Trainer is built, after the configured ones
        for name, value in self.trainer_defaults.items():
            if name == "callbacks":
                continue
            try:
                parser.set_defaults({f"trainer.{name}": value})
            except ValueError:
                if value is None or isinstance(value, (dict, str, bool, int, float, list)):
                    raise
                # An object (`"profiler": PyTorchProfiler()`) for a class-typed argument, where jsonargparse wants a
                # `class_path` dict or `lazy_instance`: it cannot go in the config, so it is used when the
                # config leaves the argument unset (null), like the callbacks of `trainer_defaults`.
                self._object_trainer_defaults[name] = value
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        # without a datamodule class the group is optional: the model may define its own dataloaders
        parser.add_lightning_class_args(
            self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
            required=self.datamodule_class is not None,
        )

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            # unless `add_arguments_to_parser` added its own, any optimizer / scheduler can be chosen
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments or links (``parser.link_arguments("data.num_classes", "model.num_classes")``).

        Args:
            parser: the parser (with subcommands, called once for each subcommand's parser).
        """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands (Trainer method names) and, for each, the method arguments the CLI fills itself."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        # a trainer builder function: its return annotation tells which Trainer class has the methods
        trainer_class = (
            self.trainer_class if isinstance(self.trainer_class, type) else class_from_function(self.trainer_class)
        )
        for name in self.subcommands():
            description = _short_description(getattr(trainer_class, name))
            sub_kwargs = dict(kwargs.get(name, {}))
            sub_kwargs.setdefault("description", description)
            subparser = self._prepare_subcommand_parser(trainer_class, name, **sub_kwargs)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=description)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        skip: set[Union[str, int]] = set(self.subcommands()[subcommand])
        proxy = _resolved_signature_proxy(getattr(klass, subcommand))
        if proxy is None:
            added = parser.add_method_arguments(klass, subcommand, skip=skip)
        else:
            added = parser.add_function_arguments(proxy, skip=skip)
        # these (`ckpt_path`, `verbose`...) are passed to the Trainer method when the subcommand runs
        self._subcommand_method_arguments[subcommand] = added
        return parser

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Link every optimizer/scheduler group added with a ``link_to`` key to that key."""
        for key, (class_type, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to == "AUTOMATIC":
                continue
            if isinstance(class_type, tuple):
                # subclass mode: the value already is {"class_path": ..., "init_args": ...}
                parser.link_arguments(key, link_to)
            else:
                parser.link_arguments(key, link_to, compute_fn=partial(_with_class_path, class_type))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (default ``sys.argv[1:]``) into ``self.config``."""
        if args is not None and len(sys.argv) > 1:
            rank_zero_warn(
                "LightningCLI's args parameter is intended to run from within Python like if it were from the command "
                f"line; the command line arguments sys.argv[1:]={sys.argv[1:]} are ignored in favour of "
                f"args={args}. To prevent mistakes, give only one of them."
            )
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, the model hyperparameters saved in that checkpoint become the model's config."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # "last", "best", a URL or a sharded directory: the Trainer resolves those
        hparams = dict(_read_checkpoint_hparams(ckpt_path))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(
                f"Parsing of ckpt_path hyperparameters failed! The hyperparameters saved in {ckpt_path} do not fit "
                "the model's arguments (see the error above); give the model class that wrote the checkpoint.\n"
            )
            raise

    # ---------------------------------------------------------------------------------------------- building
    def _dump_config(self) -> None:
        """The parsed config as plain data (once): what ``save_hyperparameters()`` of the CLI's modules records."""
        if hasattr(self, "config_dump"):
            return
        dumped = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml")
        self.config_dump = yaml.safe_load(dumped)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def _add_instantiators(self) -> None:
        self.parser.add_instantiator(
            _ModuleInstantiator(cli=self, key="model"),
            _module_type(self._model_class),
            subclasses=self.subclass_mode_model,
        )
        self.parser.add_instantiator(
            _ModuleInstantiator(cli=self, key="data"),
            _module_type(self._datamodule_class),
            subclasses=self.subclass_mode_data,
        )

    def before_instantiate_classes(self) -> None:
        """Override to run code after parsing, before anything is built (``self.config`` may be edited)."""

    def instantiate_classes(self) -> None:
        """Build the config's classes (``self.config_init``), then ``self.datamodule``, ``self.model`` and
        ``self.trainer``."""
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Override to run code once everything is built, before the subcommand runs."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build a Trainer from the config, the callbacks and ``trainer_defaults``'s callbacks.

        Args:
            kwargs: Trainer arguments that replace the configured ones (the config itself is not changed), e.g.
                ``cli.instantiate_trainer(max_epochs=1)`` for a second Trainer.
        """
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        config = {**config}
        for name, value in self._object_trainer_defaults.items():
            if config.get(name) is None:
                config[name] = value
        if "callbacks" not in config:
            rank_zero_warn(
                f"The `{self.trainer_class.__qualname__}` class does not expose the `callbacks` argument so they will"
                " not be included (the configured ones, `trainer_defaults['callbacks']` and the SaveConfigCallback)."
            )
            return self.trainer_class(**config)
        configured = config["callbacks"]
        # a new list: the one in `config_init` stays as configured when a second Trainer is built
        all_callbacks = [] if configured is None else list(configured) if isinstance(configured, list) else [configured]
        all_callbacks.extend(callbacks)
        if "callbacks" in self.trainer_defaults:
            defaults = self.trainer_defaults["callbacks"]
            all_callbacks.extend(_build_callbacks(defaults if isinstance(defaults, list) else [defaults]))
        if self.save_config_callback and not config.get("fast_dev_run", False):
            # the subcommand's own section, as its parser expects
            all_callbacks.append(
                self.save_config_callback(
                    self._parser(self.subcommand),
                    self.config.get(str(self.subcommand), self.config),
                    **self.save_config_kwargs,
                )
            )
        config = {**config, "callbacks": all_callbacks}
        with _noted("LightningCLI: raised while building the Trainer from --trainer.* (the `trainer:` section)"):
            return self.trainer_class(**config)

    def _parser(self, subcommand: Optional[str]) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule, optimizer: Optimizer, lr_scheduler: Optional[LRSchedulerTypeUnion] = None
    ) -> Any:
        """What the model's ``configure_optimizers`` returns when the optimizer comes from ``--optimizer``.

        Override (as a ``staticmethod`` taking the module first) to return something else, e.g. a scheduler
        ``interval``.

        Args:
            lightning_module: the model.
            optimizer: the optimizer built from the config for the model's parameters.
            lr_scheduler: the scheduler built from the config, if any.
        """
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            scheduler_config = {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}
            return {"optimizer": optimizer, "lr_scheduler": scheduler_config}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        """Replace the model's ``configure_optimizers`` when exactly one optimizer group (and at most one scheduler
        group) is ``AUTOMATIC`` and an optimizer was configured."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = _automatic_keys(parser._optimizers, (Optimizer,))
        lr_schedulers = _automatic_keys(parser._lr_schedulers, LRSchedulerTypeTuple)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(lr_schedulers) > 1:
            raise MisconfigurationException(
                f"`{type(self).__name__}.add_configure_optimizers_method_to_model` expects at most one optimizer "
                f"and one lr_scheduler to be 'AUTOMATIC', but found {optimizers + lr_schedulers}. Give the others a "
                "`link_to` key and implement `configure_optimizers` in the model."
            )
        optimizer_class = parser._optimizers[optimizers[0]][0]
        optimizer_init = self._get(self.config_init, optimizers[0])
        if not isinstance(optimizer_class, tuple):
            optimizer_init = _with_class_path(optimizer_class, optimizer_init)
        if not optimizer_init:
            return  # the groups exist but no optimizer was given: the model's own method stays
        lr_scheduler_init = None
        if lr_schedulers:
            lr_scheduler_class = parser._lr_schedulers[lr_schedulers[0]][0]
            lr_scheduler_init = self._get(self.config_init, lr_schedulers[0])
            if not isinstance(lr_scheduler_class, tuple):
                lr_scheduler_init = _with_class_path(lr_scheduler_class, lr_scheduler_init)

        if _overrides_configure_optimizers(self.model):
            rank_zero_warn(
                f"`{type(self.model).__name__}.configure_optimizers` will be overridden by "
                f"`{type(self).__name__}.configure_optimizers`."
            )
        builder = _ConfiguredOptimizers(self.configure_optimizers, optimizer_init, lr_scheduler_init or None)
        method = partial(builder, self.model)
        # the Trainer sees an overridden `configure_optimizers` through `__wrapped__`
        update_wrapper(method, self.configure_optimizers)
        self.model.configure_optimizers = method

    def _get(self, config: Namespace, key: str, default: Optional[Any] = None) -> Any:
        """``config[key]``, inside the subcommand's section when there is one."""
        return config.get(str(self.subcommand), config).get(key, default)

    # -------------------------------------------------------------------------------------------------- run
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        # a CLI method of the subcommand's name replaces the Trainer's
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        method_args = self._subcommand_method_arguments[subcommand]
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in method_args}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(None if seed is True else seed, workers=True)
        # the config (and so config.yaml) records the seed actually used, so the run can be repeated
        if self.subcommand:
            self.config[self.subcommand]["seed_everything"] = seed
        else:
            self.config["seed_everything"] = seed


# ------------------------------------------------------------------------------------------------- helpers
def _short_description(component: object) -> Optional[str]:
    """The first paragraph of a docstring (the subcommand's help line)."""
    doc = getattr(component, "__doc__", None)
    if not doc:
        return None
    if docstring_parser is not None:
        try:
            return docstring_parser.parse(doc).short_description
        except (ValueError, docstring_parser.ParseError) as err:
            rank_zero_warn(f"Failed parsing the docstring of {component}: {err}")
            return None
    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ")


def _resolved_signature_proxy(method: Callable[..., Any]) -> Optional[Callable[..., Any]]:
    """A stand-in with evaluated annotations for a method whose signature shows postponed (string) annotations
    that the method object no longer carries, e.g. ``mock.patch.object(Trainer, "fit", autospec=True)`` of a
    module written with ``from __future__ import annotations``: jsonargparse would silently drop every such
    argument. ``None`` when jsonargparse can read the method itself."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())
    if getattr(method, "__annotations__", None) or not any(isinstance(p.annotation, str) for p in params):
        return None
    module = sys.modules.get(getattr(method, "__module__", None) or "")
    namespace = dict(vars(module)) if module is not None else {}
    resolved = []
    for param in params[1:] if params and params[0].name == "self" else params:
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # the module's own names, as typing.get_type_hints does
            except Exception:
                annotation = inspect.Parameter.empty
        resolved.append(param.replace(annotation=annotation))

    def proxy(*args: Any, **kwargs: Any) -> None:
        pass

    proxy.__signature__ = signature.replace(parameters=resolved)  # type: ignore[attr-defined]
    proxy.__annotations__ = {p.name: p.annotation for p in resolved if p.annotation is not inspect.Parameter.empty}
    proxy.__doc__ = method.__doc__
    proxy.__name__ = proxy.__qualname__ = getattr(method, "__name__", "method")
    return proxy


def _automatic_keys(register: dict[str, tuple[Union[type, tuple[type, ...]], str]], bases: tuple) -> list[str]:
    keys = []
    for key, (classes, link_to) in register.items():
        classes = classes if isinstance(classes, tuple) else (classes,)
        if link_to == "AUTOMATIC" and any(issubclass(c, bases) for c in classes):
            keys.append(key)
    return keys


def _overrides_configure_optimizers(model: LightningModule) -> bool:
    if "configure_optimizers" in vars(model):
        return True
    return getattr(type(model), "configure_optimizers", None) is not LightningModule.configure_optimizers


class _ConfiguredOptimizers:
    """The model's ``configure_optimizers`` when ``--optimizer`` is given (a class, so the model stays picklable).

    The optimizer (and scheduler) is built when the Trainer asks for it, from the parameters the model has then
    (after ``configure_model`` and any device move), and anew on every call, like a hand-written method.
    """

    def __init__(self, configure: Callable[..., Any], optimizer_init: dict[str, Any],
                 lr_scheduler_init: Optional[dict[str, Any]]) -> None:
        self.configure = configure
        self.optimizer_init = optimizer_init
        self.lr_scheduler_init = lr_scheduler_init

    def __call__(self, module: LightningModule) -> Any:
        optimizer = instantiate_class(module.parameters(), self.optimizer_init)
        lr_scheduler = instantiate_class(optimizer, self.lr_scheduler_init) if self.lr_scheduler_init else None
        return self.configure(module, optimizer=optimizer, lr_scheduler=lr_scheduler)


def _class_path_of(class_type: type) -> str:
    return f"{class_type.__module__}.{class_type.__name__}"


def _with_class_path(class_type: type, init_args: Optional[Union[Namespace, dict[str, Any]]] = None) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": ...}`` for a group added from one class (its config holds only the
    arguments)."""
    if isinstance(init_args, Namespace):
        init_args = init_args.as_dict()
    return {"class_path": _class_path_of(class_type), "init_args": init_args or {}}


def _import_class(class_path: str) -> Any:
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {class_path!r} is not a dotted import path such as 'torch.optim.Adam'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"class_path {class_path!r}: cannot import module {module_name!r} ({err}).") from err
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"class_path {class_path!r}: module {module_name!r} has no attribute {name!r}.") from None


def instantiate_class(args: Union[Any, tuple[Any, ...]], init: dict[str, Any]) -> Any:
    """Build ``init["class_path"]`` with positional ``args`` and the keyword arguments ``init["init_args"]``.

    Example: ``instantiate_class(model.parameters(), {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})``.

    Args:
        args: the positional argument, or a tuple of them.
        init: ``{"class_path": "package.module.Class", "init_args": {...}}`` (``init_args`` optional).

    Returns:
        The new object.
    """
    kwargs = init.get("init_args", {}) or {}
    if not isinstance(args, tuple):
        args = (args,)
    return _import_class(init["class_path"])(*args, **kwargs)


def _build_callbacks(values: list[Any]) -> list[Callback]:
    """``trainer_defaults["callbacks"]`` entries: callback objects, or ``class_path`` dicts built here."""
    built = []
    for value in values:
        if isinstance(value, dict) and "class_path" in value:
            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument("--callback", type=Callback)
            value = parser.instantiate_classes(parser.parse_object({"callback": value})).callback
        built.append(value)
    return built


def _read_checkpoint_hparams(path: Union[str, Path]) -> dict[str, Any]:
    try:  # memory-mapped: only the small hparams dict is read, not the weights
        checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    hparams = checkpoint.get(LightningModule.CHECKPOINT_HYPER_PARAMS_KEY, {}) if isinstance(checkpoint, dict) else {}
    return hparams if isinstance(hparams, dict) else {}


def _module_type(value: Union[Callable[..., Any], type]) -> type:
    """The class a model/datamodule factory function returns (its return annotation), or the class itself."""
    if callable(value) and not isinstance(value, type):
        return inspect.signature(value).return_annotation
    return value


def _set_nested(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


@contextmanager
def _recorded_hparams(class_type: type, hparams: dict[str, Any]):  # type: ignore[no-untyped-def]
    """While ``class_type`` is built, its ``save_hyperparameters()`` records ``hparams`` plus ``_instantiator``."""
    token = _given_hparams.set((class_type, {**hparams, "_instantiator": _INSTANTIATOR_PATH}))
    try:
        yield
    finally:
        _given_hparams.reset(token)


class _ModuleInstantiator:
    """jsonargparse instantiator for the CLI's model or datamodule: builds it with the parsed config as hparams."""

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli = cli
        self.key = key

    def __call__(self, class_type: type[ModuleType], *args: Any, applied_instantiation_links: dict,
                 **kwargs: Any) -> ModuleType:
        self.cli._dump_config()
        section = self.cli.config_dump.get(self.key) or {}
        if "class_path" in section:
            if not _is_class(section["class_path"], class_type):
                # a module of the same base type nested in the configured one: it records its own arguments
                return class_type(*args, **kwargs)
            # the same hparams whether or not subclass mode is on; the class goes in `_class_path`
            hparams = {
                "_class_path": section["class_path"],
                **(section.get("init_args") or {}),
                **(section.get("dict_kwargs") or {}),
            }
        else:
            hparams = dict(section)
        # values linked on instantiation (e.g. `data.num_classes` -> `model.num_classes`) are not in the dump
        for target, value in (applied_instantiation_links or {}).items():
            if not target.startswith(f"{self.key}."):
                continue
            target = target[len(self.key) + 1:]
            if target.startswith("init_args."):
                target = target[len("init_args."):]
            _set_nested(hparams, target, value)
        with _recorded_hparams(class_type, hparams), _noted(
            f"LightningCLI: raised by {class_type.__qualname__}.__init__ while building `{self.key}` from the config "
            f"(--{self.key}.* options, or the `{self.key}:` section of a config file)"
        ):
            return class_type(*args, **kwargs)


@contextmanager
def _noted(note: str):  # type: ignore[no-untyped-def]
    """Add ``note`` to an exception raised inside (Python 3.11+ shows it under the traceback)."""
    try:
        yield
    except Exception as err:
        if hasattr(err, "add_note"):
            err.add_note(note)
        raise


def _is_class(class_path: str, class_type: type) -> bool:
    try:
        return _import_class(class_path) is class_type
    except ImportError:
        return False


def instantiate_module(class_type: type[ModuleType], config: dict[str, Any]) -> ModuleType:
    """Rebuild a module from the hyperparameters LightningCLI recorded (``load_from_checkpoint`` calls this).

    Args:
        class_type: the class ``load_from_checkpoint`` was called on; with ``_class_path`` in ``config`` any
            subclass of it named there.
        config: the recorded hyperparameters (without ``_instantiator``).

    Returns:
        The module, whose ``save_hyperparameters()`` recorded ``config`` again.
    """
    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        value: dict[str, Any] = {
            "class_path": config["_class_path"],
            "dict_kwargs": {k: v for k, v in config.items() if k != "_class_path"},
        }
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
        value = dict(config)

    def build(cls: type, *args: Any, **kwargs: Any) -> Any:
        with _recorded_hparams(cls, config):
            return cls(*args, **kwargs)

    parser.add_instantiator(build, class_type, subclasses=True)
    return parser.instantiate_classes(parser.parse_object({"module": value})).module
