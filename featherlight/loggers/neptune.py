"""Neptune logger (``neptune`` client >= 1.0).

``neptune`` is an optional extra: ``pip install 'featherlight[neptune]'``. It is imported when the logger is built,
never when this module is imported. Neptune's hosted service has been shut down; the client still runs in its
``offline`` mode (``.neptune/`` on disk) and ``debug`` mode (in memory), and against self-hosted servers.
"""

from __future__ import annotations

import contextlib
import functools
import os
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from featherlight.loggers._tracking import _require, _to_float
from featherlight.loggers.logger import Logger, _add_prefix, _convert_params, rank_zero_experiment
from featherlight.utilities.rank_zero import rank_zero_only

if TYPE_CHECKING:
    from neptune import Run
    from neptune.handler import Handler

__all__ = ["NeptuneLogger"]

_INTEGRATION_VERSION_KEY = "source_code/integrations/pytorch-lightning"


def _catch_inactive(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Ignore logging to a run that was stopped (for example from the web app) instead of crashing the training."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from neptune.exceptions import InactiveRunException

        with contextlib.suppress(InactiveRunException):
            return fn(*args, **kwargs)
        return None

    return wrapper


class NeptuneLogger(Logger):
    r"""Log to a `Neptune <https://neptune.ai>`_ run.

    All arguments are keyword-only.

    Args:
        api_key: Neptune API token (better given as ``NEPTUNE_API_TOKEN``).
        project: ``"workspace/project"``; ``NEPTUNE_PROJECT`` if ``None``.
        name: Name of the run.
        run: An existing ``neptune.Run`` (or a namespace handler such as ``run["finetune"]``) to log to; then no
            other run argument may be given.
        log_model_checkpoints: Upload the checkpoints of ``ModelCheckpoint`` to the run after each save, keeping
            only those the callback keeps.
        prefix: Namespace everything is logged under (``"training"``).
        \**neptune_run_kwargs: Passed to ``neptune.init_run``: ``mode`` (``"async"``, ``"sync"``, ``"offline"``,
            ``"debug"``), ``tags``, ``description``, ``capture_stdout``...

    Raises:
        ModuleNotFoundError: If ``neptune`` is not installed.
        ValueError: If ``run`` is not a Neptune run or handler, or is given together with other run arguments.

    Metrics are appended to ``<prefix>/<name>`` series with their step; hyperparameters go to
    ``<prefix>/hyperparams``; :meth:`finalize` records the outcome in ``<prefix>/status``. :attr:`name` is the run
    name and :attr:`version` its short id (``"OFFLINE"`` in offline mode). Only global rank 0 creates a run.
    """

    LOGGER_JOIN_CHAR = "/"
    PARAMETERS_KEY = "hyperparams"
    ARTIFACTS_KEY = "artifacts"

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        project: Optional[str] = None,
        name: Optional[str] = None,
        run: Optional[Union[Run, Handler]] = None,
        log_model_checkpoints: Optional[bool] = True,
        prefix: str = "training",
        **neptune_run_kwargs: Any,
    ) -> None:
        _require("neptune", "neptune", "NeptuneLogger")
        _check_arguments(api_key, project, name, run, neptune_run_kwargs)
        super().__init__()
        self._log_model_checkpoints = log_model_checkpoints
        self._prefix = prefix
        self._run_name = name
        self._project_name = project
        self._api_key = api_key
        self._run_instance = run
        self._neptune_run_kwargs = neptune_run_kwargs
        self._run_short_id: Optional[str] = None
        if run is not None:
            self._retrieve_run_data()
            self._root(run)[_INTEGRATION_VERSION_KEY] = _version()

    @staticmethod
    def _root(run: Any) -> Run:
        from neptune.handler import Handler

        return run.get_root_object() if isinstance(run, Handler) else run

    def _retrieve_run_data(self) -> None:
        assert self._run_instance is not None
        root = self._root(self._run_instance)
        root.wait()
        if root.exists("sys/id"):
            self._run_short_id = root["sys/id"].fetch()
            self._run_name = root["sys/name"].fetch()
        else:  # offline: nothing can be fetched
            self._run_short_id = "OFFLINE"
            self._run_name = "offline-name"

    @property
    def _neptune_init_args(self) -> dict[str, Any]:
        args = dict(self._neptune_run_kwargs)
        if self._project_name is not None:
            args["project"] = self._project_name
        if self._api_key is not None:
            args["api_token"] = self._api_key
        if self._run_short_id is not None and self._run_short_id != "OFFLINE":
            args["with_id"] = self._run_short_id
        if self._run_name is not None:
            args["name"] = self._run_name
        return args

    def _path(self, *keys: str) -> str:
        """``keys`` joined with ``/`` under the prefix namespace."""
        return self.LOGGER_JOIN_CHAR.join([self._prefix, *keys] if self._prefix else keys)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run_instance"] = None  # a copy (ddp_spawn) reopens the run by its id on first use
        return state

    # ------------------------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The Neptune run: ``self.logger.experiment["train/images"].append(File.as_image(img))``."""
        return self.run

    @property
    @rank_zero_experiment
    def run(self) -> Run:
        """The Neptune run, created on first access."""
        if self._run_instance is None:
            import neptune

            self._run_instance = neptune.init_run(**self._neptune_init_args)
            self._retrieve_run_data()
            self._run_instance[_INTEGRATION_VERSION_KEY] = _version()
        return self._run_instance

    @property
    def save_dir(self) -> Optional[str]:
        """``<cwd>/.neptune``, where the client keeps its local data."""
        return os.path.join(os.getcwd(), ".neptune")

    @property
    def name(self) -> Optional[str]:
        """The run name (``"offline-name"`` in offline mode)."""
        return self._run_name

    @property
    def version(self) -> Optional[str]:
        """The run's short id (``"OFFLINE"`` in offline mode)."""
        return self._run_short_id

    # ------------------------------------------------------------------------------------------------ logging
    @rank_zero_only
    @_catch_inactive
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        """Store ``params`` under ``<prefix>/hyperparams``, nested dicts as namespaces; values Neptune cannot store
        become strings."""
        from neptune.utils import stringify_unsupported

        params = _named_callables(_convert_params(params))
        self.run[self._path(self.PARAMETERS_KEY)] = stringify_unsupported(params)

    @rank_zero_only
    @_catch_inactive
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Append each metric to the series ``<prefix>/<name>`` at ``step``."""
        run = self.run
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            run[key].append(_to_float(value), step=step)

    @rank_zero_only
    @_catch_inactive
    def finalize(self, status: str) -> None:
        """Record ``status`` in ``<prefix>/status`` and wait for the queued operations."""
        if self._run_instance is None:
            return
        if status:
            self.run[self._path("status")] = status
        self._root(self._run_instance).wait()

    @rank_zero_only
    @_catch_inactive
    def log_model_summary(self, model: Any, max_depth: int = -1) -> None:
        """Upload ``model``'s summary table as ``<prefix>/model/summary`` (a text file)."""
        from neptune.types import File

        from featherlight.utilities.model_summary import ModelSummary

        summary = str(ModelSummary(model, max_depth=max_depth))
        self.run[self._path("model/summary")] = File.from_content(content=summary, extension="txt")

    # ------------------------------------------------------------------------------------------------ checkpoints
    @rank_zero_only
    @_catch_inactive
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Upload the callback's last, top-k and best checkpoints to ``<prefix>/model/checkpoints/<name>``, delete
        uploads of checkpoints it no longer keeps, and record the best path and score."""
        if not self._log_model_checkpoints:
            return
        run = self.run
        namespace = self._path("model/checkpoints")
        keep: set[str] = set()

        def upload(path: str) -> None:
            name = _model_name(path, checkpoint_callback)
            keep.add(name)
            run[f"{namespace}/{name}"].upload(path)

        last = getattr(checkpoint_callback, "last_model_path", "")
        if last:
            upload(last)
        for path in getattr(checkpoint_callback, "best_k_models", None) or {}:
            upload(path)
        best = getattr(checkpoint_callback, "best_model_path", "")
        if best:
            run[self._path("model/best_model_path")] = best
            upload(best)
        if run.exists(namespace):
            structure = run.get_structure()
            for key in namespace.split(self.LOGGER_JOIN_CHAR):
                structure = structure[key]
            for stale in set(_leaf_paths(structure)) - keep:
                del run[f"{namespace}/{stale}"]
        score = getattr(checkpoint_callback, "best_model_score", None)
        if score is not None:
            run[self._path("model/best_model_score")] = float(_to_float(score))


def _check_arguments(
    api_key: Optional[str], project: Optional[str], name: Optional[str], run: Any, kwargs: dict[str, Any]
) -> None:
    from neptune import Run
    from neptune.handler import Handler

    if run is not None and not isinstance(run, (Run, Handler)):
        raise ValueError("`run` must be a `neptune.Run` or a `neptune.handler.Handler` (such as `run['namespace']`).")
    if run is not None and (any(a is not None for a in (api_key, project, name)) or kwargs):
        raise ValueError(
            "An existing `run` was given, so `api_key`, `project`, `name` and other `neptune.init_run()` arguments"
            " cannot be: pass them to `neptune.init_run()` when you create the run."
        )


def _model_name(path: str, checkpoint_callback: Any) -> str:
    """The checkpoint's path relative to the callback's ``dirpath``, without extension, with ``/`` separators."""
    dirpath = getattr(checkpoint_callback, "dirpath", None)
    if dirpath:
        path = os.path.normpath(path)
        root = os.path.normpath(dirpath)
        if not path.startswith(root + os.sep):
            raise ValueError(f"The checkpoint {path} was expected to be inside {root}.")
        path = os.path.splitext(path[len(root) + 1 :])[0]
    return path.replace(os.sep, "/")


def _leaf_paths(structure: dict[str, Any], base: Optional[str] = None) -> Iterator[str]:
    for key, value in structure.items():
        path = key if base is None else f"{base}/{key}"
        if isinstance(value, dict):
            yield from _leaf_paths(value, path)
        else:
            yield path


def _named_callables(params: dict[str, Any]) -> dict[str, Any]:
    """Classes and functions by ``__name__`` (their repr holds a memory address)."""
    import inspect

    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            value = _named_callables(dict(value))
        elif inspect.isclass(value) or (callable(value) and hasattr(value, "__name__")):
            value = value.__name__
        out[key] = value
    return out


def _version() -> str:
    from featherlight.__about__ import __featherlight_version__

    return f"featherlight {__featherlight_version__}"
