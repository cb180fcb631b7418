"""MLflow logger: metrics, hyperparameters and checkpoints to an MLflow tracking store.

``mlflow`` (or ``mlflow-skinny``) is an optional extra: ``pip install 'featherlight[mlflow]'``. It is imported when the
logger first talks to the tracking store, never when this module is imported.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import weakref
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from featherlight.loggers._tracking import _BackgroundUploader, _CheckpointRecord, _require, _scan_checkpoints
from featherlight.loggers.logger import Logger, _add_prefix, _convert_params, _flatten_dict, rank_zero_experiment
from featherlight.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLFlowLogger"]

log = logging.getLogger(__name__)

LOCAL_FILE_URI_PREFIX = "file:"
# Buffered metrics go out at the first log call this many seconds after the previous send, and at every
# `save()` (the trainer calls it at epoch ends) and `finalize()`. One `log_batch` per interval instead of one per
# call: each call validates and builds entities, and over HTTP a synchronous call is a round trip.
_FLUSH_SECS = 2.0
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limits on one `log_batch` request
_MAX_PARAMS_PER_BATCH = 100
_MAX_KEY_LENGTH = 250
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]+")  # what MLflow accepts in a key on every platform
_STATUS = {
    "success": "FINISHED",
    "finished": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
    "aborted": "KILLED",
    "interrupted": "KILLED",
}

_file_store_warned = False
_live_loggers: weakref.WeakSet[MLFlowLogger] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    # Metrics logged outside a Trainer (or before a crash) must not be lost in the buffer. Sent synchronously:
    # MLflow's own exit hook, which drains its asynchronous queue, may already have run.
    for logger in list(_live_loggers):
        try:
            logger._flush(synchronous=True)
        except Exception:  # noqa: S110 - nothing left to report to at exit
            pass


def _allow_file_store(tracking_uri: str) -> None:
    """Let MLflow open a ``file:`` store the user asked for (MLflow 3.x refuses one unless opted in)."""
    global _file_store_warned
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE") is not None:
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if not _file_store_warned:
        _file_store_warned = True
        rank_zero_warn(
            f"MLFlowLogger tracks to the file store {tracking_uri!r}. Recent MLflow versions keep the file store only"
            " in maintenance mode and refuse it unless `MLFLOW_ALLOW_FILE_STORE` is set, so featherlight set it to"
            " `true` for this process. To use a database store instead pass e.g."
            " `tracking_uri='sqlite:///mlflow.db'`; set `MLFLOW_ALLOW_FILE_STORE` yourself to silence this warning."
        )


def _clean_key(key: str) -> str:
    """``key`` with the characters MLflow rejects removed and made a normalized relative path."""
    new = _BAD_KEY_CHARS.sub("", key)
    if new and posixpath.normpath(new) != new:
        new = posixpath.normpath(new).lstrip("/")
        while new.startswith("../"):
            new = new[3:]
    return new[:_MAX_KEY_LENGTH]


def _interrupted() -> bool:
    """Whether a ``KeyboardInterrupt`` is being handled (the trainer reports it as ``"failed"``)."""
    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


class MLFlowLogger(Logger):
    """Log to `MLflow <https://mlflow.org>`_: metrics with their step, hyperparameters as params, and checkpoints as
    artifacts.

    Args:
        experiment_name: The experiment to log to; created if it does not exist (or only exists deleted).
        run_name: Name of the new run, stored as the ``mlflow.runName`` tag (overriding one given in ``tags``).
        tracking_uri: Where the tracking store is: ``file:<dir>``, a database URI such as ``sqlite:///mlflow.db``, or
            a server's ``http(s)://host:port``. Defaults to ``MLFLOW_TRACKING_URI`` if set, else ``file:<save_dir>``.
        tags: Tags of the new run.
        save_dir: Directory of the file store used when neither ``tracking_uri`` nor ``MLFLOW_TRACKING_URI`` is given.
        log_model: Upload checkpoints of ``ModelCheckpoint`` callbacks as run artifacts:

            * ``"all"``: each checkpoint right after it was saved;
            * ``True``: at the end of training (each one right after it was saved when ``save_top_k == -1``);
            * ``False`` (default): none.

            Uploads run on a background thread from a hard-linked snapshot of the file, so the training loop only
            waits for them in :meth:`finalize`.
        prefix: Prepended to every metric key as ``f"{prefix}-{key}"``.
        artifact_location: Artifact location of the experiment if this logger creates it; the store's default if
            ``None``.
        run_id: Log to this existing run (for example to continue it after a resume) instead of starting a new one.
        synchronous: ``True`` sends every :meth:`log_metrics` call to the store at once and waits for it. ``False``
            or ``None`` (default) buffers metrics and sends them with MLflow's asynchronous logging (MLflow >= 2.8;
            older versions send synchronously) every couple of seconds, at epoch ends and in :meth:`finalize`, which
            waits for them.
        checkpoint_path_prefix: Artifact directory under which uploaded checkpoints go
            (``{checkpoint_path_prefix}/{checkpoint file stem}/``).

    Raises:
        ModuleNotFoundError: If ``mlflow`` is not installed.

    The run's status is set by :meth:`finalize`: ``FINISHED`` after a successful fit/validate/test, ``FAILED`` after an
    exception, ``KILLED`` after a ``KeyboardInterrupt``. :attr:`name` is the experiment id and :attr:`version` the run
    id (reading either starts the run). Only global rank 0 talks to the store.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: Optional[str] = None,
        tracking_uri: Optional[str] = None,
        tags: Optional[dict[str, Any]] = None,
        save_dir: Optional[str] = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: Optional[str] = None,
        run_id: Optional[str] = None,
        synchronous: Optional[bool] = None,
        checkpoint_path_prefix: str = "",
    ) -> None:
        _require("mlflow", "mlflow", "MLFlowLogger")
        super().__init__()
        if not tracking_uri:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: Optional[str] = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = tags
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._synchronous = synchronous
        self._checkpoint_path_prefix = checkpoint_path_prefix
        self._initialized = False
        self._mlflow_client: Optional[MlflowClient] = None
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: list[Any] = []  # log_model=True: uploaded at the end of training
        self._logged_params: dict[str, str] = {}
        self._renamed_keys: dict[str, str] = {}
        self._buffer: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._last_flush = time.monotonic()
        self._operations: list[Any] = []  # pending asynchronous `log_batch` operations
        self._buffer_lock = threading.Lock()
        self._uploader = _BackgroundUploader("MLFlowLogger checkpoint upload")

    # ------------------------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``mlflow.tracking.MlflowClient`` of the tracking store; the run is created on first access.

        Use it for anything MLflow supports, e.g. ``self.logger.experiment.log_text(self.logger.run_id, ...)``.
        """
        if self._initialized:
            assert self._mlflow_client is not None
            return self._mlflow_client
        if self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX) or "://" not in self._tracking_uri:
            _allow_file_store(self._tracking_uri)
        import mlflow
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self._tracking_uri)
        # Like Lightning, make `mlflow.*` fluent calls in user code go to the same store.
        mlflow.set_tracking_uri(self._tracking_uri)
        if self._run_id is not None:
            run = client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            # MLflow params cannot change: remember what the run has so re-logging the same values is a no-op.
            self._logged_params.update(run.data.params)
        else:
            if self._experiment_id is None:
                experiment = client.get_experiment_by_name(self._experiment_name)
                if experiment is not None and experiment.lifecycle_stage != "deleted":
                    self._experiment_id = experiment.experiment_id
                else:
                    log.info("MLflow experiment %r not found; creating it.", self._experiment_name)
                    self._experiment_id = client.create_experiment(
                        name=self._experiment_name, artifact_location=self._artifact_location
                    )
            tags = dict(self.tags or {})
            if self._run_name is not None:
                from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

                if MLFLOW_RUN_NAME in tags:
                    log.warning("The tag %s in `tags` is replaced by run_name=%r.", MLFLOW_RUN_NAME, self._run_name)
                tags[MLFLOW_RUN_NAME] = self._run_name
                self.tags = tags
            run = client.create_run(experiment_id=self._experiment_id, tags=_resolve_tags(tags))
            self._run_id = run.info.run_id
        self._mlflow_client = client
        self._initialized = True
        _live_loggers.add(self)
        return client

    @property
    def run_id(self) -> Optional[str]:
        """The id of the run logged to (the run is created if it does not exist yet)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> Optional[str]:
        """The id of the experiment of the run (the experiment and run are created if needed)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> Optional[str]:
        """The experiment id (as in Lightning: the id, not the experiment name)."""
        return self.experiment_id

    @property
    def version(self) -> Optional[str]:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> Optional[str]:
        """The directory of a ``file:`` tracking store, else ``None``."""
        if self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX):
            return self._tracking_uri[len(LOCAL_FILE_URI_PREFIX) :]
        return None

    # ------------------------------------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        """Log ``params`` as run params: nested dicts flattened to ``a/b`` keys, values as strings cut to MLflow's
        length limit, in batches of 100.

        MLflow params cannot change within a run: a key logged again with the same value is skipped, one with a
        different value is skipped with a warning.
        """
        flat = _flatten_dict(_convert_params(params))
        from mlflow.entities import Param

        max_length = _max_param_length()
        new: dict[str, str] = {}
        truncated, changed = [], []
        for raw_key, raw_value in flat.items():
            key = self._key(str(raw_key))
            value = str(raw_value)
            if len(value) > max_length:
                truncated.append(key)
                value = value[:max_length]
            previous = self._logged_params.get(key)
            if previous is not None:
                if previous != value:
                    changed.append(key)
                continue
            new[key] = value
        if truncated:
            rank_zero_warn(
                f"MLflow stores at most {max_length} characters of a param value; the values of {truncated} were cut"
                " to that length. Log long values as an artifact instead (`logger.experiment.log_text(...)`)."
            )
        if changed:
            rank_zero_warn(
                f"MLflow params cannot change within a run; the new values of {changed} were not logged. Start a new"
                " run (no `run_id`) or log them as tags or metrics."
            )
        if not new:
            return
        client, run_id = self.experiment, self.run_id
        params_list = [Param(key=k, value=v) for k, v in new.items()]
        # params go out synchronously: few, once, and an error (a changed value) should surface here
        kwargs = {"synchronous": True} if _async_supported() else {}
        for start in range(0, len(params_list), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id=run_id, params=params_list[start : start + _MAX_PARAMS_PER_BATCH], **kwargs)
        self._logged_params.update(new)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Record ``metrics`` at ``step`` (0 if ``None``).

        String values are dropped with a warning; keys lose the characters MLflow rejects (with a warning once).
        Values are buffered and sent every couple of seconds unless ``synchronous=True``.
        """
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        timestamp = int(time.time() * 1000)
        step = int(step or 0)
        rows = []
        for key, value in metrics.items():
            if isinstance(value, str):
                log.warning("Discarding metric with string value %s=%s.", key, value)
                continue
            if hasattr(value, "item"):
                value = value.item()
            rows.append((self._key(key), float(value), timestamp, step))
        if not rows:
            return
        if not self._initialized:
            _ = self.experiment
        with self._buffer_lock:
            self._buffer.extend(rows)
        if self._synchronous or time.monotonic() - self._last_flush > _FLUSH_SECS:
            self._flush()

    def _key(self, key: str) -> str:
        new = self._renamed_keys.get(key)
        if new is None:
            new = _clean_key(key)
            if new != key:
                rank_zero_warn(
                    "MLflow only allows letters, digits, '_', '-', '.', ' ' and '/' in metric and param names, as a"
                    f" relative path; {key!r} is logged as {new!r}.",
                    category=RuntimeWarning,
                )
            self._renamed_keys[key] = new
        return new

    def _flush(self, synchronous: Optional[bool] = None) -> None:
        """Send the buffered metrics: synchronously if asked (or configured), else with MLflow's async logging."""
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        if not rows or self._mlflow_client is None:
            return
        from mlflow.entities import Metric

        sync = self._synchronous if synchronous is None else synchronous
        kwargs = {"synchronous": bool(sync)} if _async_supported() else {}
        for start in range(0, len(rows), _MAX_METRICS_PER_BATCH):
            chunk = rows[start : start + _MAX_METRICS_PER_BATCH]
            batch = [Metric(key=k, value=v, timestamp=t, step=s) for k, v, t, s in chunk]
            operation = self._mlflow_client.log_batch(run_id=self._run_id, metrics=batch, **kwargs)
            if operation is not None and not sync:
                self._operations.append(operation)

    def _wait(self) -> None:
        """Wait for the asynchronous sends so far; their errors are raised here."""
        operations, self._operations = self._operations, []
        for operation in operations:
            operation.wait()

    @rank_zero_only
    def save(self) -> None:
        """Send the buffered metrics (without waiting for asynchronous sends)."""
        if self._initialized:
            self._flush()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Send everything, upload the remaining checkpoints (``log_model=True``), wait for all uploads, and set the
        run's status.

        ``status`` is the trainer's ``"success"`` (-> ``FINISHED``) or ``"failed"`` (-> ``FAILED``, or ``KILLED`` while
        a ``KeyboardInterrupt`` is being handled); MLflow's own names (``"KILLED"``...) are passed through.
        """
        if not self._initialized:
            return
        mlflow_status = _STATUS.get(status.lower(), status.upper()) if isinstance(status, str) else "FINISHED"
        if mlflow_status == "FAILED" and _interrupted():
            mlflow_status = "KILLED"
        try:
            self._flush()
            for callback in self._checkpoint_callbacks:
                try:
                    self._scan_and_log_checkpoints(callback)
                except ReferenceError:  # the trainer (and its callback) is gone; nothing left to scan
                    pass
            self._uploader.wait()
            self._wait()
        finally:
            client = self.experiment
            if client.get_run(self._run_id):
                client.set_terminated(self._run_id, mlflow_status)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Queue the callback's new checkpoints for upload (``log_model="all"``, or ``True`` with ``save_top_k=-1``),
        or remember the callback to upload its checkpoints at the end (``log_model=True``)."""
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True and not any(checkpoint_callback == c for c in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        if rank_zero_only.rank != 0:
            return
        records = _scan_checkpoints(checkpoint_callback, self._logged_model_time)
        if not records:
            return
        client, run_id = self.experiment, self.run_id
        for record in records:
            directory, snapshot = _BackgroundUploader.snapshot(record.path)
            self._uploader.submit(self._upload_checkpoint, client, run_id, record, directory, snapshot)
            self._logged_model_time[record.path] = record.mtime

    def _upload_checkpoint(
        self, client: MlflowClient, run_id: str, record: _CheckpointRecord, directory: str, snapshot: str
    ) -> None:
        """Upload one checkpoint with ``metadata.yaml`` and ``aliases.txt`` to ``{prefix}/{stem}/`` (worker thread)."""
        import yaml

        stem = os.path.splitext(os.path.basename(record.path))[0]
        artifact_path = posixpath.join(self._checkpoint_path_prefix, stem) if self._checkpoint_path_prefix else stem
        try:
            client.log_artifact(run_id, snapshot, artifact_path)
            metadata = {
                "score": record.score,
                "original_filename": os.path.basename(record.path),
                "Checkpoint": record.settings,
            }
            aliases = ["latest", "best"] if record.is_best else ["latest"]
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "metadata.yaml"), "w", encoding="utf-8") as file:
                    yaml.safe_dump(_plain(metadata), file, default_flow_style=False)
                with open(os.path.join(tmp, "aliases.txt"), "w", encoding="utf-8") as file:
                    file.write(str(aliases))
                client.log_artifacts(run_id, tmp, artifact_path)
        finally:
            _BackgroundUploader.discard(directory)

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the trainer's loggers: the client and the lock cannot travel; a copy reconnects lazily
        # to the same run.
        state = self.__dict__.copy()
        state.update(_mlflow_client=None, _initialized=False, _buffer=[], _operations=[], _buffer_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._buffer_lock = threading.Lock()


def _plain(value: Any) -> Any:
    """``value`` with tensors/numpy scalars as Python numbers, so ``yaml.safe_dump`` can write it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return str(value)


def _max_param_length() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        return int(MAX_PARAM_VAL_LENGTH)
    except ImportError:  # very old MLflow
        return 250


@functools.lru_cache(maxsize=None)
def _async_supported() -> bool:
    """Whether ``MlflowClient.log_batch`` takes ``synchronous`` (MLflow >= 2.8)."""
    import inspect

    from mlflow.tracking import MlflowClient

    return "synchronous" in inspect.signature(MlflowClient.log_batch).parameters


def _resolve_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """``tags`` plus MLflow's context tags (user, source), the user's taking precedence."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:
        return tags
    return resolve_tags(tags)
