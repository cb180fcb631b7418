"""Base class and shared helpers for experiment loggers."""

from __future__ import annotations

import enum
import functools
import inspect
import os
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from featherlight.io.paths import get_filesystem, is_remote
from featherlight.utilities.rank_zero import rank_zero_only

if TYPE_CHECKING:
    import torch

__all__ = ["Logger", "DummyLogger", "DummyExperiment", "rank_zero_experiment"]


class Logger(ABC):
    """Base class for experiment loggers.

    Subclasses must implement :attr:`name`, :attr:`version`, :meth:`log_metrics` and :meth:`log_hyperparams`.
    Loggers that write to the local file system should also report :attr:`save_dir`, :attr:`root_dir` and
    :attr:`log_dir`; the others return ``None``.
    """

    @property
    @abstractmethod
    def name(self) -> Optional[str]:
        """The experiment name."""

    @property
    @abstractmethod
    def version(self) -> Optional[Union[int, str]]:
        """The experiment version."""

    @property
    def root_dir(self) -> Optional[str]:
        """Directory holding every version of this experiment, or ``None`` if nothing is saved locally."""
        return None

    @property
    def log_dir(self) -> Optional[str]:
        """Directory of the current version of the experiment, or ``None`` if nothing is saved locally."""
        return None

    @property
    def save_dir(self) -> Optional[str]:
        """Top-level directory the logger was asked to save into, or ``None`` if nothing is saved locally."""
        return None

    @property
    def group_separator(self) -> str:
        """Separator the logger uses to group metrics into sections (``"/"``)."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        """Record ``metrics`` (name -> scalar value) at global ``step``."""

    @abstractmethod
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters given as a dict or :class:`~argparse.Namespace`."""

    def log_graph(self, model: torch.nn.Module, input_array: Optional[torch.Tensor] = None) -> None:
        """Record the computational graph of ``model`` traced with ``input_array``. No-op by default."""

    def save(self) -> None:
        """Persist buffered log data. No-op by default."""

    def finalize(self, status: str) -> None:
        """Finish the experiment; ``status`` is e.g. ``"success"``, ``"failed"`` or ``"aborted"``.

        The default implementation calls :meth:`save`.
        """
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by the checkpoint callback after it saved a new checkpoint. No-op by default."""

    def prepare(self) -> None:
        """Called on every process when a run starts, before the callbacks' ``setup``: create what
        ``log_dir`` names, so callbacks can write there. The default touches ``experiment`` (which creates
        it for most loggers); a logger whose experiment is expensive to create overrides this."""
        getattr(self, "experiment", None)


class DummyExperiment:
    """Stand-in experiment: every attribute is a method that does nothing and returns ``None``; indexing returns
    the experiment itself and item assignment is ignored (``logger.experiment["key"] = value`` works on any rank)."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Callable[..., None]:
        return self.nop

    def __getitem__(self, idx: Any) -> DummyExperiment:
        return self

    def __setitem__(self, *args: Any, **kwargs: Any) -> None:
        pass


_DummyExperiment = DummyExperiment  # the earlier private name


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorate a logger's ``experiment`` getter so that ranks other than 0 get a no-op dummy experiment.

    This keeps non-zero ranks from creating files or connections while user code such as
    ``self.logger.experiment.add_image(...)`` still runs everywhere.
    """

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if getattr(rank_zero_only, "rank", 0) > 0:
            return DummyExperiment()
        return fn(self)

    return experiment


class DummyLogger(Logger):
    """A logger that records nothing.

    Any attribute that is not defined resolves to a no-op method, so code written for a real logger runs unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._experiment = DummyExperiment()

    @property
    def experiment(self) -> DummyExperiment:
        """A dummy experiment whose methods do nothing."""
        return self._experiment

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def __getitem__(self, idx: int) -> DummyLogger:
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        # Only reached for attributes not found normally: make them all harmless no-op methods.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method


# ----------------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------------


def _next_version(root: str) -> int:
    """Return one more than the highest ``N`` among the ``version_N`` directories in ``root`` (0 if there are none).
    ``root`` may be an fsspec URL."""
    if is_remote(root):
        fs = get_filesystem(root)
        try:
            listing = fs.ls(root, detail=True)
        except (FileNotFoundError, OSError):
            return 0
        directories = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in listing
                       if entry.get("type") == "directory"]
    else:
        try:
            directories = [entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))]
        except OSError:
            return 0
    versions = [int(name[len("version_"):]) for name in directories
                if name.startswith("version_") and name[len("version_"):].isdigit()]
    return max(versions) + 1 if versions else 0


def _claim_next_version(root: str) -> int:
    """The next free ``version_N`` under ``root``, claimed: on global rank zero, for a local ``root``, the directory
    is created here with ``os.mkdir``, which fails if it exists, so two runs started at the same time in the same
    directory never both take ``version_N`` (the one that loses the race takes the next number). Other ranks, and
    fsspec URLs, only look (:func:`_next_version`): rank zero's directory is the run's."""
    version = _next_version(root)
    if is_remote(root) or rank_zero_only.rank != 0:
        return version
    os.makedirs(root, exist_ok=True)
    while True:
        try:
            os.mkdir(_version_dir(root, version))
            return version
        except FileExistsError:  # another run took it (or a file has that name): the next one
            version += 1


def _version_dir(root: str, version: Union[int, str]) -> str:
    """Return the directory of ``version`` under ``root``: ``root/version_{version}`` for an int, ``root/version``
    for a string."""
    return os.path.join(root, version if isinstance(version, str) else f"version_{version}")


def _convert_params(params: Optional[Union[Mapping[str, Any], Namespace]]) -> dict[str, Any]:
    """Return ``params`` as a plain dict: a Namespace becomes its ``vars``, ``None`` becomes ``{}``."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    return dict(params)


def _flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Flatten nested mappings into one level, joining keys with ``delimiter``.

    Namespaces and dataclass instances are flattened like mappings, and a list whose items are all mappings is
    flattened with the item index as a key level: ``{"a": {"b": 1}, "l": [{"c": 2}]}`` -> ``{"a/b": 1, "l/0/c": 2}``.
    Other values (including lists of scalars) are kept as they are.
    """
    result: dict[str, Any] = {}
    for key, value in params.items():
        full_key = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        elif isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, MutableMapping):
            result.update(_flatten_dict(value, delimiter, full_key))
        elif isinstance(value, list) and value and all(isinstance(item, MutableMapping) for item in value):
            for i, item in enumerate(value):
                result.update(_flatten_dict(item, delimiter, f"{full_key}{delimiter}{i}"))
        else:
            result[full_key] = value
    return result


def _sanitize_value(value: Any) -> Any:
    if isinstance(value, bool) or type(value) in (int, float, str):
        return value
    # numpy and 0-dim torch scalars expose .item(); checked by duck typing so numpy/torch are not imported here.
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        # The default repr contains a memory address, which differs between runs.
        return getattr(value, "__qualname__", None) or getattr(value, "__name__", str(value))
    if isinstance(value, functools.partial):
        return f"partial({_sanitize_value(value.func)})"
    return str(value)


def _sanitize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``params`` whose values are all ``bool``/``int``/``float``/``str``, for loggers that only
    accept primitives.

    Numpy and 0-dim tensor scalars become Python numbers, enum members become ``"Cls.NAME"``, classes and functions
    become their qualified name, and everything else (lists, Namespaces, ``None``, arrays...) becomes ``str(value)``.
    """
    return {key: _sanitize_value(value) for key, value in params.items()}


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    """Return ``metrics`` with every key turned into ``f"{prefix}{separator}{key}"`` (unchanged if ``prefix`` is
    empty)."""
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _sanitize_callable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``params`` with every class or other callable replaced by its name (its ``__name__``, else its
    ``str``). Callables are never called: featherlight logs a callable hyperparameter by name (Lightning calls it
    without arguments and logs the result when it can)."""

    def name_of(value: Any) -> Any:
        if inspect.isclass(value) or callable(value):
            return getattr(value, "__name__", None) or str(value)
        return value

    return {key: name_of(value) for key, value in params.items()}


def _convert_json_serializable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``params`` with every value JSON cannot encode replaced by its ``str``."""
    import json

    def encodable(value: Any) -> bool:
        if value is None or isinstance(value, (bool, int, float, str)):
            return True
        try:
            json.dumps(value)
        except (TypeError, ValueError, OverflowError):
            return False
        return True

    return {key: value if encodable(value) else str(value) for key, value in params.items()}
