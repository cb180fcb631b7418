"""Weights & Biases logger.

``wandb`` is an optional extra: ``pip install 'featherlight[wandb]'``. It is imported when the run is first needed,
never when this module is imported.
"""

from __future__ import annotations

import enum
import inspect
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from featherlight.loggers._tracking import _BackgroundUploader, _CheckpointRecord, _require, _scan_checkpoints
from featherlight.loggers.logger import Logger, _add_prefix, _convert_params, rank_zero_experiment
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from torch import nn
    from wandb import Artifact
    from wandb.wandb_run import Run

__all__ = ["WandbLogger"]

_PATH = Union[str, "os.PathLike[str]"]
_STEP_KEY = "trainer/global_step"


class WandbLogger(Logger):
    r"""Log to `Weights & Biases <https://wandb.ai>`_.

    Args:
        name: Display name of the run.
        save_dir: Directory under which wandb keeps its files (``<save_dir>/wandb/<run>``).
        version: Id of the run; give the id of an earlier run to resume it.
        offline: Keep the run on this machine (``wandb sync`` uploads it later).
        dir: Same as ``save_dir`` (used when ``save_dir`` is ``None``).
        id: Same as ``version``.
        anonymous: Allow (``True``) anonymous logging.
        project: The project of the run; defaults to ``WANDB_PROJECT``, else ``"lightning_logs"``.
        log_model: Log checkpoints of ``ModelCheckpoint`` callbacks as ``model`` artifacts with ``latest``/``best``
            aliases: ``"all"`` each checkpoint after it was saved, ``True`` at the end of training (each one after it
            was saved when ``save_top_k == -1``), ``False`` none. Artifacts are built on a background thread from a
            hard-linked snapshot of the file, so the training loop does not wait for the file to be hashed and copied.
        experiment: An existing wandb run to log to instead of starting one.
        prefix: Prepended to every metric key as ``f"{prefix}-{key}"``.
        checkpoint_name: Name of the checkpoint artifact; ``model-<run id>`` by default.
        add_file_policy: ``"mutable"`` (default) lets wandb copy each checkpoint into its staging area;
            ``"immutable"`` promises the file does not change until uploaded, and skips the copy.
        \**kwargs: Passed on to :func:`wandb.init` (``entity``, ``group``, ``tags``, ``mode``, ``config``...).

    Raises:
        ModuleNotFoundError: If ``wandb`` is not installed.
        MisconfigurationException: If both ``offline`` and ``log_model`` are set (nothing can be uploaded offline).

    Metrics are logged with ``trainer/global_step`` as their x-axis. Hyperparameters go to the run config.
    :meth:`finalize` does not finish the run, so that ``trainer.test()`` after ``fit`` logs to the same run; wandb
    finishes it at exit (or call ``logger.experiment.finish()``). Only global rank 0 starts a run.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: _PATH = ".",
        version: Optional[str] = None,
        offline: bool = False,
        dir: Optional[_PATH] = None,
        id: Optional[str] = None,
        anonymous: Optional[bool] = None,
        project: Optional[str] = None,
        log_model: Union[Literal["all"], bool] = False,
        experiment: Optional[Run] = None,
        prefix: str = "",
        checkpoint_name: Optional[str] = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        _require("wandb", "wandb", "WandbLogger")
        if offline and log_model:
            raise MisconfigurationException(
                f"WandbLogger(offline=True, log_model={log_model!r}) cannot work: checkpoints cannot be uploaded in"
                " offline mode. Set `offline=False` to log your model, or `log_model=False`."
            )
        super().__init__()
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: list[Any] = []
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy
        save_dir = os.fspath(save_dir) if save_dir is not None else None
        dir = os.fspath(dir) if dir is not None else None
        project = project or os.environ.get("WANDB_PROJECT", "lightning_logs")
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project,
            "dir": save_dir or dir,
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
        }
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(**kwargs)
        self._project = self._wandb_init.get("project")
        self._save_dir = self._wandb_init.get("dir")
        self._name = self._wandb_init.get("name")
        self._id = self._wandb_init.get("id")
        self._uploader = _BackgroundUploader("WandbLogger checkpoint upload")

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the loggers: start the run here, in the main process, and let the copy attach to it.
        state = self.__dict__.copy()
        if rank_zero_only.rank == 0:
            run = self.experiment
            state["_id"] = getattr(run, "id", None)
            state["_attach_id"] = getattr(run, "_attach_id", None)
            state["_name"] = getattr(run, "name", self._name)
        state["_experiment"] = None
        return state

    # ------------------------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The wandb ``Run``, started on first access (or the run already in progress in this process, or the one
        given to the constructor)."""
        if self._experiment is not None:
            return self._experiment
        import wandb

        attach_id = getattr(self, "_attach_id", None)
        if wandb.run is not None:
            rank_zero_warn(
                "A wandb run is already in progress; WandbLogger logs to it. Call `wandb.finish()` before creating the"
                " logger to get a run of its own."
            )
            self._experiment = wandb.run
        elif attach_id is not None and hasattr(wandb, "_attach"):
            self._experiment = wandb._attach(attach_id)
        else:
            init = {k: v for k, v in self._wandb_init.items() if v is not None}
            if init.get("dir") is not None:
                os.makedirs(init["dir"], exist_ok=True)
            self._experiment = wandb.init(**init)
            if getattr(self._experiment, "define_metric", None) is not None:
                if self._wandb_init.get("sync_tensorboard"):
                    self._experiment.define_metric("*", step_metric="global_step")
                else:
                    # every metric is plotted against the trainer's step, whatever wandb's own step counter says
                    self._experiment.define_metric(_STEP_KEY)
                    self._experiment.define_metric("*", step_metric=_STEP_KEY, step_sync=True)
        return self._experiment

    @property
    def save_dir(self) -> Optional[str]:
        """The directory wandb writes under (``save_dir``, else ``dir``)."""
        return self._save_dir

    @property
    def name(self) -> Optional[str]:
        """The project name (the run's display name is ``logger.experiment.name``)."""
        return self._project

    @property
    def version(self) -> Optional[str]:
        """The run id: the started run's, else the one given to the constructor (reading it starts nothing)."""
        return self._experiment.id if self._experiment else self._id

    # ------------------------------------------------------------------------------------------------ logging
    def watch(
        self, model: nn.Module, log: Optional[str] = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """Have wandb record ``model``'s gradients (``log="gradients"``), parameters (``"parameters"``) or both
        (``"all"``) every ``log_freq`` steps, and its graph."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def unwatch(self, model: Optional[nn.Module] = None) -> None:
        """Remove the hooks :meth:`watch` added (to ``model``, or to every watched model)."""
        self.experiment.unwatch(model)

    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        """Add ``params`` to the run config (nested dicts stay nested; values wandb cannot store become strings)."""
        params = _json_safe(_convert_params(params))
        self.experiment.config.update(params, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Log ``metrics`` with ``trainer/global_step = step`` (as given when ``sync_tensorboard`` is on)."""
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            self.experiment.log({**metrics, _STEP_KEY: step})
        else:
            self.experiment.log(dict(metrics))

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: Optional[list[str]] = None,
        data: Optional[list[list[Any]]] = None,
        dataframe: Any = None,
        step: Optional[int] = None,
    ) -> None:
        """Log a ``wandb.Table`` given by ``columns`` and ``data`` rows, or by a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: Optional[list[str]] = None,
        data: Optional[list[list[str]]] = None,
        dataframe: Any = None,
        step: Optional[int] = None,
    ) -> None:
        """Log text as a table (same arguments as :meth:`log_table`)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log ``images`` (tensors, arrays, PIL images or file paths); each keyword is a list with one value per
        image, passed to ``wandb.Image`` (``caption=[...]``, ``masks=[...]``, ``boxes=[...]``)."""
        self._log_media(key, images, "images", "Image", step, kwargs)

    @rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log ``audios`` (arrays or file paths); keywords are per-item lists for ``wandb.Audio``
        (``sample_rate=[...]``, ``caption=[...]``)."""
        self._log_media(key, audios, "audios", "Audio", step, kwargs)

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log ``videos`` (arrays or file paths); keywords are per-item lists for ``wandb.Video``
        (``fps=[...]``, ``format=[...]``, ``caption=[...]``)."""
        self._log_media(key, videos, "videos", "Video", step, kwargs)

    def _log_media(
        self, key: str, items: list[Any], arg: str, kind: str, step: Optional[int], kwargs: dict[str, list[Any]]
    ) -> None:
        if not isinstance(items, list):
            raise TypeError(f"`{arg}` must be a list, got {type(items).__name__}.")
        n = len(items)
        for name, values in kwargs.items():
            if len(values) != n:
                raise ValueError(f"Expected {n} items for `{name}`, one per item of `{arg}`, but got {len(values)}.")
        import wandb

        media_cls = getattr(wandb, kind)
        media = [media_cls(item, **{name: values[i] for name, values in kwargs.items()}) for i, item in enumerate(items)]
        self.log_metrics({key: media}, step)

    # ------------------------------------------------------------------------------------------------ artifacts
    @staticmethod
    @rank_zero_only
    def download_artifact(
        artifact: str,
        save_dir: Optional[_PATH] = None,
        artifact_type: Optional[str] = None,
        use_artifact: Optional[bool] = True,
    ) -> str:
        """Download ``artifact`` (``"entity/project/name:version"``) to ``save_dir`` and return the directory.

        Within a run (and ``use_artifact=True``) the run is recorded as using the artifact; without one the public
        API fetches it.
        """
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def use_artifact(self, artifact: str, artifact_type: Optional[str] = None) -> Artifact:
        """Record that the run uses ``artifact`` and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Queue the callback's new checkpoints as artifacts (``log_model="all"``, or ``True`` with
        ``save_top_k=-1``), or remember the callback to log its checkpoints when training succeeds
        (``log_model=True``)."""
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True and not any(checkpoint_callback == c for c in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """On success, log the remaining checkpoints (``log_model=True``); in any case wait for the checkpoint
        artifacts queued so far. The run itself stays open (see the class docstring)."""
        if self._experiment is None:
            return
        if status == "success":
            for callback in self._checkpoint_callbacks:
                try:
                    self._scan_and_log_checkpoints(callback)
                except ReferenceError:  # the trainer and its callback are gone
                    pass
        self._uploader.wait()

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        if rank_zero_only.rank != 0:
            return
        records = _scan_checkpoints(checkpoint_callback, self._logged_model_time)
        if not records:
            return
        run = self.experiment
        if not self._checkpoint_name:
            self._checkpoint_name = f"model-{run.id}"
        callback_name = checkpoint_callback.__class__.__name__  # (a weakref proxy forwards __class__)
        for record in records:
            if self.add_file_policy == "immutable":
                # the user promises the file stays as it is until wandb has uploaded it: no snapshot, no copy
                directory, path = None, record.path
            else:
                directory, path = _BackgroundUploader.snapshot(record.path)
            self._uploader.submit(self._log_checkpoint, run, record, path, directory, callback_name)
            self._logged_model_time[record.path] = record.mtime

    def _log_checkpoint(
        self, run: Run, record: _CheckpointRecord, path: str, directory: Optional[str], callback_name: str
    ) -> None:
        """Build and log one checkpoint artifact (worker thread)."""
        import wandb

        try:
            metadata = {
                "score": record.score,
                "original_filename": os.path.basename(record.path),
                callback_name: record.settings,
            }
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=_json_safe(metadata))
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if record.is_best else ["latest"]
            run.log_artifact(artifact, aliases=aliases)
        finally:
            if directory is not None:  # a "mutable" file was copied into wandb's staging area by add_file
                _BackgroundUploader.discard(directory)


def _json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold made representable: classes and functions by ``__name__``, tensors/numpy
    scalars as numbers, enums by name, other objects as ``str``; mappings and sequences converted recursively."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if inspect.isclass(value) or (callable(value) and hasattr(value, "__name__")):
        return value.__name__
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _json_safe(item())
    return str(value)
