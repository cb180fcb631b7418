"""Comet logger.

``comet-ml`` is an optional extra: ``pip install 'featherlight[comet]'``. It is imported when the logger is built,
never when this module is imported.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from featherlight.loggers._tracking import _require, _to_float
from featherlight.loggers.logger import Logger, _convert_params, rank_zero_experiment
from featherlight.utilities.rank_zero import _get_rank, rank_zero_only

if TYPE_CHECKING:
    from comet_ml import ExistingExperiment, Experiment, OfflineExperiment
    from torch import nn

    CometExperiment = Union[Experiment, ExistingExperiment, OfflineExperiment]

__all__ = ["CometLogger"]

log = logging.getLogger(__name__)

FRAMEWORK_NAME = "pytorch-lightning"  # what Comet's UI groups Lightning-API runs under


class CometLogger(Logger):
    r"""Log to `Comet <https://www.comet.com>`_, online or to an offline archive.

    All arguments are keyword-only.

    Args:
        api_key: Comet API key (better configured with ``comet login`` or ``COMET_API_KEY``).
        workspace: Comet workspace; the default workspace if ``None``.
        project: Comet project; ``"Uncategorized"`` if ``None``.
        experiment_key: Key of an existing experiment to log to, or the key to give a new one (32-50 alphanumeric
            characters).
        mode: ``"get_or_create"`` (continue the experiment ``experiment_key`` names, or start it), ``"get"``
            (continue it; it must exist) or ``"create"`` (always a new experiment).
        online: ``False`` records the experiment into a ``.zip`` archive in ``offline_directory`` (upload it later
            with ``comet upload``); ``True``/``None`` logs to the Comet server.
        prefix: Prepended to metric names as ``f"{prefix}_{name}"``.
        \**kwargs: Passed to ``comet_ml.ExperimentConfig``: ``name``, ``tags``, ``offline_directory``,
            ``log_code``, ``disabled``... The Lightning 2.5 names ``experiment_name``, ``project_name``, ``offline``
            and ``save_dir`` are still understood, with a warning.

    Raises:
        ModuleNotFoundError: If ``comet-ml`` is not installed.

    The experiment starts when the logger is built (on global rank 0 only). :meth:`finalize` does not end it, so
    that testing after fitting logs to the same experiment; it flushes what was logged. Comet ends it at exit (or
    call ``logger.experiment.end()``, which also writes the offline archive).
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        workspace: Optional[str] = None,
        project: Optional[str] = None,
        experiment_key: Optional[str] = None,
        mode: Optional[Literal["get_or_create", "get", "create"]] = None,
        online: Optional[bool] = None,
        prefix: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        _require("comet_ml", "comet", "CometLogger", pip_name="comet-ml")
        super().__init__()
        project, online = _renamed_arguments(kwargs, project, online)
        self._api_key = api_key
        self._workspace = workspace
        self._mode = mode
        self._online = online
        self._project_name = project
        self._experiment_key = experiment_key
        self._prefix = prefix
        self._kwargs = kwargs
        self._experiment: Optional[CometExperiment] = None
        # Comet's automatic logging hooks into torch and would log every metric a second time.
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        import comet_ml

        self._comet_config = comet_ml.ExperimentConfig(**kwargs)
        rank = _get_rank()
        if rank is not None and rank != 0:
            return
        self._create_experiment()

    def _create_experiment(self) -> None:
        import comet_ml

        experiment = comet_ml.start(
            api_key=self._api_key,
            workspace=self._workspace,
            project=self._project_name,
            experiment_key=self._experiment_key,
            mode=self._mode,
            online=self._online,
            experiment_config=self._comet_config,
        )
        if experiment is None:
            raise comet_ml.exceptions.ExperimentNotFound(
                "Comet did not start an experiment; check `api_key`, `workspace`, `project` and `experiment_key`."
            )
        self._experiment = experiment
        self._experiment_key = experiment.get_key()
        self._project_name = experiment.project_name
        experiment.log_other("Created from", FRAMEWORK_NAME)

    @property
    @rank_zero_experiment
    def experiment(self) -> CometExperiment:
        """The ``comet_ml`` experiment (``Experiment``, ``ExistingExperiment`` or ``OfflineExperiment``)."""
        if self._experiment is None:
            self._create_experiment()
        assert self._experiment is not None
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        """Log ``params`` as experiment parameters (nested dicts appear as nested parameters)."""
        self.experiment.log_parameters(_convert_params(params), nested_support=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Log ``metrics`` at ``step``; an ``epoch`` entry becomes the experiment's epoch rather than a metric."""
        values = {key: _to_float(value) for key, value in metrics.items()}
        epoch = values.pop("epoch", None)
        self.experiment.log_metrics(values, step=step, epoch=epoch, prefix=self._prefix)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush what was logged; the experiment stays open (see the class docstring)."""
        if self._experiment is None:
            return
        self._experiment.flush()

    @property
    def save_dir(self) -> Optional[str]:
        """The offline directory of the experiment config."""
        return self._comet_config.offline_directory

    @property
    def name(self) -> Optional[str]:
        """The project name."""
        return self._project_name

    @property
    def version(self) -> Optional[str]:
        """The experiment key, once the experiment exists."""
        if self._experiment is not None:
            return self._experiment.get_key()
        return None

    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Record ``model``'s structure as the experiment's model graph."""
        if self._experiment is not None:
            self._experiment.set_model_graph(model)

    def __getstate__(self) -> dict[str, Any]:
        # a copy (ddp_spawn) continues the same experiment by its key
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_experiment_key"] = self._experiment.get_key()
        state["_experiment"] = None
        return state


def _renamed_arguments(kwargs: dict[str, Any], project: Optional[str], online: Optional[bool]) -> tuple:
    """Map the pre-2.6 argument names in ``kwargs`` to the current ones (in place); returns ``(project, online)``."""
    if "experiment_name" in kwargs:
        log.warning("CometLogger: `experiment_name` is deprecated; use `name`.")
        value = kwargs.pop("experiment_name")
        kwargs.setdefault("name", value)
    if "project_name" in kwargs:
        log.warning("CometLogger: `project_name` is deprecated; use `project`.")
        value = kwargs.pop("project_name")
        project = project if project is not None else value
    if "offline" in kwargs:
        log.warning("CometLogger: `offline` is deprecated; use `online` (`online=False` is `offline=True`).")
        value = kwargs.pop("offline")
        if online is None and value is not None:
            online = not value
    if "save_dir" in kwargs:
        log.warning("CometLogger: `save_dir` is deprecated; use `offline_directory`.")
        value = kwargs.pop("save_dir")
        kwargs.setdefault("offline_directory", value)
    return project, online
