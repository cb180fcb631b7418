"""CSV logger: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``."""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from typing import IO, Any, Optional, Union

from featherlight.io.atomic import write_bytes
from featherlight.io.paths import get_filesystem, is_remote, read_bytes
from featherlight.loggers.logger import (
    Logger,
    _add_prefix,
    _claim_next_version,
    _convert_params,
    _version_dir,
    rank_zero_experiment,
)
from featherlight.utilities.rank_zero import rank_zero_only, rank_zero_warn

__all__ = ["CSVLogger", "ExperimentWriter"]

_PATH = Union[str, "os.PathLike[str]"]


def _to_python(value: Any) -> Any:
    # Tensors (and numpy scalars) become Python numbers; this is a host sync, but logging only happens at log intervals.
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    return value


class ExperimentWriter:
    """Buffers metric rows in memory and writes them to ``log_dir/metrics.csv`` on :meth:`save`.

    The CSV header is the sorted union of every key seen so far (``step`` included). When a save brings new keys, the
    whole file is rewritten with the wider header; otherwise the new rows are appended. Missing values are empty
    cells. Hyperparameters given to :meth:`log_hparams` are written to ``log_dir/hparams.yaml``.

    ``log_dir`` may be an fsspec URL (``s3://``, ``memory://``...); there every save writes the whole file (object
    stores cannot append).
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams_file_path = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        self.metrics: list[dict[str, Any]] = []  # rows not yet written
        self.metrics_keys: list[str] = []  # header of the file on disk
        self.hparams: dict[str, Any] = {}
        self._rows_logged = 0
        self._file_started = False
        self._fs = get_filesystem(log_dir) if is_remote(log_dir) else None  # None: the local disk, through os
        if self._fs is not None:
            not_empty = self._fs.isdir(log_dir) and bool(self._fs.ls(log_dir))
        else:
            not_empty = os.path.isdir(log_dir) and bool(os.listdir(log_dir))
        if not_empty:
            rank_zero_warn(
                f"Experiment logs directory {log_dir} exists and is not empty;"
                f" its {self.NAME_METRICS_FILE} will be overwritten once new metrics are saved."
            )
        if self._fs is not None:
            self._fs.makedirs(log_dir, exist_ok=True)
        else:
            os.makedirs(log_dir, exist_ok=True)

    def _isfile(self, path: str) -> bool:
        return self._fs.isfile(path) if self._fs is not None else os.path.isfile(path)

    def log_metrics(self, metrics_dict: dict[str, Any], step: Optional[int] = None) -> None:
        """Buffer one row; ``step`` defaults to the number of rows logged before it."""
        if step is None:
            step = self._rows_logged
        row = {key: _to_python(value) for key, value in metrics_dict.items()}
        row["step"] = step
        self.metrics.append(row)
        self._rows_logged += 1

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Merge ``params`` into the recorded hyperparameters and rewrite ``hparams.yaml``."""
        self.hparams.update(params)
        self._write_hparams()

    def _write_hparams(self) -> None:
        from featherlight.core.saving import save_hparams_to_yaml

        save_hparams_to_yaml(self.hparams_file_path, self.hparams)

    def save(self) -> None:
        """Write buffered rows to ``metrics.csv`` (and ``hparams.yaml`` if hyperparameters were logged but the file
        is missing)."""
        if self.hparams and not self._isfile(self.hparams_file_path):
            self._write_hparams()
        if not self.metrics:
            return
        known = set(self.metrics_keys)
        new_keys = {key for row in self.metrics for key in row} - known
        if new_keys:
            self.metrics_keys = sorted(known | new_keys)

        if self._fs is not None:
            self._rewrite_remote()
        elif not self._file_started or not os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, "w", encoding="utf-8", newline="") as file:
                self._write_rows(file, self.metrics, header=True)
        elif new_keys:
            self._rewrite_with_new_header()
        else:
            with open(self.metrics_file_path, "a", encoding="utf-8", newline="") as file:
                self._write_rows(file, self.metrics, header=False)
        self._file_started = True
        self.metrics = []

    def _write_rows(self, file: Any, rows: list[dict[str, Any]], header: bool) -> None:
        writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
        if header:
            writer.writeheader()
        writer.writerows(rows)

    def _rewrite_remote(self) -> None:
        """The rows already in the remote file plus the new ones, written as a whole file."""
        assert self._fs is not None
        rows: list[dict[str, Any]] = []
        if self._file_started and self._fs.isfile(self.metrics_file_path):
            text = read_bytes(self.metrics_file_path).decode("utf-8")
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        rows.extend(self.metrics)
        out = io.StringIO(newline="")
        self._write_rows(out, rows, header=True)
        write_bytes(self.metrics_file_path, out.getvalue().encode("utf-8"))

    def _rewrite_with_new_header(self) -> None:
        from featherlight.io.atomic import atomic_write

        with open(self.metrics_file_path, encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
        rows.extend(self.metrics)
        def write(binary_file: IO[bytes]) -> None:
            text_file = io.TextIOWrapper(binary_file, encoding="utf-8", newline="")
            self._write_rows(text_file, rows, header=True)
            text_file.flush()
            text_file.detach()  # leave closing the binary file to atomic_write

        # Atomic so that a crash mid-rewrite cannot lose the rows already on disk.
        atomic_write(self.metrics_file_path, write)


_ExperimentWriter = ExperimentWriter  # the earlier private name


class CSVLogger(Logger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml`` in ``save_dir/name/version``.

    Args:
        save_dir: Directory under which the experiment directory is created: a local path or an fsspec URL
            (``s3://bucket/logs``, ``memory://logs``...; needs ``fsspec`` and the protocol's package).
        name: Experiment name; ``None`` or ``""`` puts the versions directly in ``save_dir``.
        version: ``None`` picks the next free ``version_N`` (one above the highest existing one); an int ``v`` uses
            ``version_{v}``; a string is used as the directory name as is.
        prefix: Prepended to every metric key as ``f"{prefix}-{key}"``.
        flush_logs_every_n_steps: Buffered rows are written to disk whenever a row is logged at a step ``s`` with
            ``(s + 1) % flush_logs_every_n_steps == 0``, and on :meth:`save` / :meth:`finalize`.

    Only global rank 0 writes anything.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: _PATH,
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: Optional[ExperimentWriter] = None

    @property
    def name(self) -> str:
        """The experiment name."""
        return self._name

    @property
    def version(self) -> Union[int, str]:
        """The experiment version; resolved to the next free integer on first access if none was given, and that
        ``version_N`` directory is created then (claimed: a run started at the same time takes the next one). An
        explicit ``version`` is used as given, even if its directory exists."""
        if self._version is None:
            self._version = _claim_next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        """The ``save_dir`` given to the constructor."""
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the directory holding all versions of this experiment."""
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        """``root_dir/version_{version}`` (or ``root_dir/{version}`` for a string version)."""
        return _version_dir(self.root_dir, self.version)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The underlying :class:`ExperimentWriter`, created (with its directory) on first access."""
        if self._experiment is None:
            self._experiment = ExperimentWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Optional[Union[dict[str, Any], Namespace]] = None) -> None:
        """Merge ``params`` into the recorded hyperparameters and write them to ``hparams.yaml``."""
        self.experiment.log_hparams(_convert_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        """Buffer one row of ``metrics`` (tensors converted to Python numbers) at ``step``."""
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        experiment = self.experiment
        if step is None:
            step = experiment._rows_logged
        experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write buffered metrics (and missing ``hparams.yaml``) to disk."""
        super().save()
        self.experiment.save()

    def plot(self, path: Optional[_PATH] = None) -> str:
        """Write buffered rows to disk and draw every logged metric against the step into one PNG.

        Returns the PNG's path (``log_dir/metrics.png`` unless ``path`` is given). Needs matplotlib
        (``pip install 'featherlight[plot]'``); see :mod:`featherlight.plot`.
        """
        from featherlight.plot import plot_metrics

        if self._experiment is not None:
            self._experiment.save()
        return plot_metrics(self.log_dir, path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush everything to disk; does nothing if nothing was ever logged."""
        if self._experiment is None:
            return
        self.save()
