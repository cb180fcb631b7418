"""TensorBoard logger.

Scalars are written by featherlight's own small event-file writer (:mod:`featherlight.loggers._tfevents`);
``tensorboard`` (or ``tensorboardX``) is imported only when the ``SummaryWriter`` behind :attr:`experiment` is first
needed.
"""

from __future__ import annotations

import importlib.util
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.loggers.logger import (
    Logger,
    _add_prefix,
    _claim_next_version,
    _convert_params,
    _flatten_dict,
    _sanitize_params,
    _version_dir,
    rank_zero_experiment,
)
from featherlight.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from featherlight.loggers._tfevents import ScalarEventWriter

__all__ = ["TensorBoardLogger"]

_PATH = Union[str, "os.PathLike[str]"]
_INSTALL_HINT = "TensorBoardLogger needs `tensorboard`: run `pip install tensorboard` (or `pip install tensorboardX`)."
# How often buffered scalars are written out (checked at each log call) unless ``flush_secs`` is given. The
# SummaryWriter this replaces for scalars had the data on disk within milliseconds of each ``add_scalar`` (its
# thread appends every event to the file; ``flush_secs=120`` only bounded the worst case), so live TensorBoard
# curves kept up with training. A write-out is one small ``write`` call (about 1 us on a local disk), so a few
# seconds keeps that promptness at no measurable cost while bounding the calls on slow network file systems.
_SCALAR_FLUSH_SECS = 5.0


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_summary_writer() -> tuple[type, Any]:
    """Return ``(SummaryWriter, hparams)`` from ``torch.utils.tensorboard``, else from ``tensorboardX``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError as torch_error:
        try:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]
            from tensorboardX.summary import hparams  # type: ignore[no-redef]
        except ImportError:
            raise ModuleNotFoundError(_INSTALL_HINT) from torch_error
    return SummaryWriter, hparams


class TensorBoardLogger(Logger):
    r"""Log to TensorBoard event files in ``save_dir/name/version[/sub_dir]``.

    Args:
        save_dir: Directory under which the experiment directory is created.
        name: Experiment name; ``None`` or ``""`` puts the versions directly in ``save_dir``.
        version: ``None`` picks the next free ``version_N``; an int ``v`` uses ``version_{v}``; a string is used as
            the directory name as is.
        log_graph: Whether :meth:`log_graph` adds the model graph (traced with ``model.example_input_array``).
        default_hp_metric: When :meth:`log_hyperparams` gets no metrics, log a placeholder ``hp_metric = -1`` so the
            hyperparameters show up in TensorBoard's HPARAMS tab.
        prefix: Prepended to every metric key as ``f"{prefix}-{key}"``.
        sub_dir: Optional extra directory level under the version directory.
        \**kwargs: Passed on to ``SummaryWriter`` (e.g. ``max_queue``, ``flush_secs``). ``flush_secs`` (default 5 for
            scalars) and ``filename_suffix`` also apply to the scalar event file.

    Raises:
        ModuleNotFoundError: If neither ``tensorboard`` nor ``tensorboardX`` is installed.

    Scalar metrics (:meth:`log_metrics`, and the ``hp_metric``/metrics of :meth:`log_hyperparams`) go to an event
    file of their own, ``events.out.tfevents.<time>.<host>.<pid>.scalars<n>``, one event per call, written
    synchronously without tensorboard's background thread. Everything else (dict metrics, the HPARAMS plugin data,
    graphs, and whatever you add through :attr:`experiment`) goes through the ``SummaryWriter``, created on first use,
    into its usual ``events.out.tfevents.*`` file in the same directory. TensorBoard reads both files as one run.

    Only global rank 0 writes anything.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: _PATH,
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: Optional[_PATH] = None,
        **kwargs: Any,
    ) -> None:
        # Checked with find_spec so that constructing the logger does not pay for importing tensorboard.
        if not (_module_available("tensorboard") or _module_available("tensorboardX")):
            raise ModuleNotFoundError(_INSTALL_HINT)
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Optional[SummaryWriter] = None
        self._scalar_writer: Optional[ScalarEventWriter] = None
        self.hparams: dict[str, Any] = {}

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
        """``save_dir/name``: the directory holding all versions of this experiment (a subclass overriding the
        ``save_dir`` or ``name`` property moves it)."""
        return os.path.join(self.save_dir, self.name)

    @property
    def sub_dir(self) -> Optional[str]:
        """The optional sub-directory under the version directory."""
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        """``root_dir/version_{version}[/sub_dir]``, with ``~`` and environment variables expanded."""
        log_dir = _version_dir(self.root_dir, self.version)
        sub_dir = self.sub_dir
        if sub_dir is not None:
            log_dir = os.path.join(log_dir, sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter``, created on first access (this is when tensorboard gets imported)."""
        if self._experiment is None:
            summary_writer_cls, _ = _import_summary_writer()
            self._experiment = summary_writer_cls(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def prepare(self) -> None:
        """Resolve the version and create the log directory (the trainer calls this at setup).

        Also imports tensorboard's event protobufs and record framing now, so that the one-off cost (a few hundred
        milliseconds: see ``benchmarks/bench_tensorboard.py`` (c)) is paid at setup rather than at the first log
        call inside the training loop.
        """
        os.makedirs(self.log_dir, exist_ok=True)
        from featherlight.loggers._tfevents import _lib

        _lib()

    def _get_scalar_writer(self) -> ScalarEventWriter:
        if self._scalar_writer is None:
            from featherlight.loggers._tfevents import ScalarEventWriter

            if self._experiment is None and self._kwargs.get("purge_step") is not None:
                # The SummaryWriter writes the purge marker; its file must come first so that readers (which go
                # through a run's files in name order) do not purge the scalars written next.
                self.experiment  # noqa: B018
            self._scalar_writer = ScalarEventWriter(
                self.log_dir,
                flush_secs=self._kwargs.get("flush_secs", _SCALAR_FLUSH_SECS),
                filename_suffix=self._kwargs.get("filename_suffix", ""),
            )
        return self._scalar_writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Write the scalar metrics as one event at ``step`` (a dict value is written with ``add_scalars``).

        Numbers and single-element tensors/arrays are stored as float32 scalars.
        """
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        scalars: dict[str, float] = {}
        for key, value in metrics.items():
            cls = type(value)
            if cls is float:
                scalars[key] = value
                continue
            if cls is not int and not hasattr(value, "item") and isinstance(value, Mapping):
                self.experiment.add_scalars(key, dict(value), step)
                continue
            try:
                if hasattr(value, "item"):  # tensors, numpy arrays and numpy scalars
                    value = value.item()
                scalars[key] = float(value)
            except Exception as ex:
                raise ValueError(
                    f"Cannot log metric {key!r} = {value!r} to TensorBoard: log a scalar, a 0-dim tensor or a dict"
                    " of scalars."
                ) from ex
        if scalars:
            (self._scalar_writer or self._get_scalar_writer()).write_scalars(scalars, step)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Optional[Union[dict[str, Any], Namespace]],
        metrics: Optional[Union[dict[str, Any], float]] = None,
        step: Optional[int] = None,
    ) -> None:
        """Record hyperparameters in ``hparams.yaml`` and in TensorBoard's HPARAMS plugin.

        ``metrics`` (a dict, or a single value stored as ``hp_metric``) are logged alongside; when it is ``None`` and
        ``default_hp_metric`` is on, ``hp_metric = -1`` is logged. TensorBoard only shows hyperparameters that have
        at least one metric, so with neither, only ``hparams.yaml`` is written.
        """
        params = _convert_params(params)
        self.hparams.update(params)
        self._save_hparams_file()

        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return
        self.log_metrics(metrics, step)
        _, hparams = _import_summary_writer()
        flat = _sanitize_params(_flatten_dict(params))
        metric_values = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
        file_writer = self.experiment._get_file_writer()
        for summary in hparams(flat, metric_values):
            file_writer.add_summary(summary, step)

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Optional[Any] = None) -> None:
        """Add ``model``'s graph traced with ``input_array`` (default: ``model.example_input_array``).

        Does nothing unless the logger was created with ``log_graph=True``; warns if there is no usable input.
        """
        if not self._log_graph:
            return
        import torch

        from featherlight.core.module import LightningModule, jit_tracing

        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute"
                " is not set or `input_array` was not given. (Set `model.example_input_array` or pass `input_array`.)"
            )
            return
        if not isinstance(input_array, (torch.Tensor, tuple)):
            rank_zero_warn(
                "Could not log computational graph to TensorBoard: The `input_array` or `model.example_input_array`"
                f" has type {type(input_array)} which can't be traced by TensorBoard. Make the input array a tuple"
                " representing the positional arguments to the model's `forward()` implementation."
            )
            return
        if isinstance(model, LightningModule):
            # the example goes through the module's batch hooks to its device, as a batch would (dataloader 0)
            input_array = model.on_before_batch_transfer(input_array, 0)
            input_array = model.transfer_batch_to_device(input_array, model.device, 0)
            input_array = model.on_after_batch_transfer(input_array, 0)
        with jit_tracing(model):  # tracing walks every attribute, `trainer` included: it may have none
            self.experiment.add_graph(model, input_array)

    def _save_hparams_file(self) -> None:
        from featherlight.core.saving import save_hparams_to_yaml

        os.makedirs(self.log_dir, exist_ok=True)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    @rank_zero_only
    def save(self) -> None:
        """Flush the event files and write ``hparams.yaml`` if the log directory exists but the file does not."""
        if self._scalar_writer is not None:
            self._scalar_writer.flush()
        if self._experiment is not None:
            self._experiment.flush()
        if self._version is None:  # nothing resolved the version, so nothing was logged: claim no directory now
            return
        log_dir = self.log_dir
        if os.path.isdir(log_dir) and not os.path.isfile(os.path.join(log_dir, self.NAME_HPARAMS_FILE)):
            self._save_hparams_file()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the writers; on ``"success"`` also make sure ``hparams.yaml`` exists.

        Logging afterwards starts new event files.
        """
        if self._scalar_writer is not None:
            self._scalar_writer.close()
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
        if status == "success":
            self.save()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None  # SummaryWriter holds threads and file handles: not picklable
        state["_scalar_writer"] = None  # holds an open file; a copy starts its own file on its first write
        return state
