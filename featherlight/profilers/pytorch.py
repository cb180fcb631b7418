"""Operator-level profiler built on :mod:`torch.profiler` (imported lazily)."""

from __future__ import annotations

import inspect
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.profilers.profiler import Profiler
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    import torch

__all__ = ["PyTorchProfiler", "RegisterRecordFunction"]

# Steps of each kind (training, validation, test, predict) recorded by the default schedule. Recording every step of a
# long run would hold every op event in host memory and slow training down; a handful of steps is what a trace is
# read for.
_DEFAULT_RECORD_STEPS = 5
# Lightning's labels, so tools that read Lightning's traces find the same names in ours.
_PROFILE_PREFIX = "[pl][profile]"
_MODULE_PREFIX = "[pl][module]"


class _StepsOfEachKind:
    """The default schedule: record the first ``steps`` steps of each kind (training, validation, test, predict),
    counted over the whole stage; the trace of each kind is saved once its ``steps`` are recorded.

    The torch profiler asks the schedule for the action of each new step; the action depends on the kind of step
    (``kind``, set by the profiler) and how many steps of that kind have finished, not on torch's global step number.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.counts: dict[Optional[str], int] = {}
        self.kind: Optional[str] = None

    def action(self, kind: Optional[str]) -> Any:
        from torch.profiler import ProfilerAction

        if kind is None:
            return ProfilerAction.NONE  # before the first step (setup hooks, prepare_data...): nothing is traced
        done = self.counts.get(kind, 0)
        if done < self.steps - 1:
            return ProfilerAction.RECORD
        if done == self.steps - 1:
            return ProfilerAction.RECORD_AND_SAVE
        return ProfilerAction.NONE

    def finished(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.kind = kind

    def __call__(self, step_num: int) -> Any:
        return self.action(self.kind)


class RegisterRecordFunction:
    """While the torch profiler records, label every submodule's forward with a ``record_function`` range named
    ``[pl][module]{module class path}: {qualified name}``, so the op table and trace show which layer ran an op.

    A context manager (``with RegisterRecordFunction(model): model(batch)``); :class:`PyTorchProfiler` uses it
    itself when it knows the model (``record_module_names=True``). The hooks are removed on exit.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._open: dict[str, list] = {}
        self._handles: list = []

    def _enter(self, record_name: str, module: Any, args: Any) -> None:
        from torch.autograd.profiler import record_function

        record = record_function(record_name)
        record.__enter__()
        self._open.setdefault(record_name, []).append(record)

    def _exit(self, record_name: str, module: Any, args: Any, output: Any) -> None:
        stack = self._open.get(record_name)
        if stack:
            stack.pop().__exit__(None, None, None)

    def __enter__(self) -> RegisterRecordFunction:
        for name, module in self._model.named_modules():
            if not name:
                continue
            record_name = f"{_MODULE_PREFIX}{type(module).__module__}.{type(module).__name__}: {name}"
            self._handles.append(module.register_forward_pre_hook(partial(self._enter, record_name)))
            self._handles.append(module.register_forward_hook(partial(self._exit, record_name)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for stack in self._open.values():
            while stack:
                stack.pop().__exit__(None, None, None)
        self._open = {}


class PyTorchProfiler(Profiler):
    r"""Profile the operators run by the model (CPU, and CUDA when available) with :class:`torch.profiler.profile`.

    The torch profiler is entered by the first profiled action, and each profiled action is also a
    ``record_function`` range named ``[pl][profile]{action}`` (Lightning's label). A step action is one whose name
    ends in ``training_step``, ``validation_step``, ``test_step`` or ``predict_step``; each finished (outermost) step
    action advances the profiler's schedule. Unless a ``schedule`` is passed, nothing before the first step is traced
    and the first 5 steps of each kind (training, validation, test, predict) are, then nothing more of that kind:
    memory and overhead stay bounded on long runs. ``schedule=None`` traces everything from the first action on.

    :meth:`summary` is ``key_averages().table(...)`` of the recorded events; the events (:attr:`function_events`) and
    the report stay available after the stage ends, until the next :meth:`setup`. When a trace is complete and
    ``export_to_chrome`` is on, it is written to ``dirpath/{stage}[-{filename}][-{rank}].pt.trace.json`` (open it in
    ``chrome://tracing`` or Perfetto); later traces of the same stage get a ``.{n}`` suffix.

    Args:
        dirpath: Directory for the report and trace files (defaults to the trainer's ``log_dir``).
        filename: Report file name stem; without it the report is logged.
        group_by_input_shapes: Group the table by operator input shapes as well (turns on ``record_shapes``).
        emit_nvtx: Emit NVTX ranges for ``nvprof``/Nsight instead of collecting events (no table, no trace).
        export_to_chrome: Write the Chrome trace file described above.
        row_limit: Rows in the table; ``-1`` for all.
        sort_by_key: Table sort column, e.g. ``cpu_time_total``, ``cuda_time_total``, ``self_cpu_memory_usage``,
            ``count``. Default: ``cuda_time_total`` when CUDA is profiled, else ``cpu_time_total``.
        record_module_names: Label ops with the submodule that ran them (:class:`RegisterRecordFunction`). Needs
            the model in ``profiler._lightning_module`` before the run.
        table_kwargs: Further keyword arguments of ``EventList.table`` for :meth:`summary` (e.g.
            ``max_name_column_width``); ``sort_by`` and ``row_limit`` are the arguments above.
        \**profiler_kwargs: Passed to :class:`torch.profiler.profile` (``activities``, ``schedule``,
            ``on_trace_ready``, ``record_shapes``, ``profile_memory``, ``with_stack``, ...).

    Raises:
        ValueError: If ``sort_by_key`` is not a known column, or ``schedule`` is not callable.
        KeyError: If ``table_kwargs`` holds ``sort_by``/``row_limit`` or a name ``EventList.table`` does not take.
    """

    STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")
    AVAILABLE_SORT_KEYS = frozenset(
        {
            "cpu_time",
            "cuda_time",
            "device_time",
            "cpu_time_total",
            "cuda_time_total",
            "device_time_total",
            "self_cpu_time_total",
            "self_cuda_time_total",
            "self_device_time_total",
            "cpu_memory_usage",
            "cuda_memory_usage",
            "device_memory_usage",
            "self_cpu_memory_usage",
            "self_cuda_memory_usage",
            "self_device_memory_usage",
            "count",
        }
    )

    def __init__(
        self,
        dirpath: Optional[Union[str, Path]] = None,
        filename: Optional[str] = None,
        group_by_input_shapes: bool = False,
        emit_nvtx: bool = False,
        export_to_chrome: bool = True,
        row_limit: int = 20,
        sort_by_key: Optional[str] = None,
        record_module_names: bool = True,
        table_kwargs: Optional[dict[str, Any]] = None,
        **profiler_kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if sort_by_key is not None and sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise ValueError(f"sort_by_key={sort_by_key!r} is not one of {sorted(self.AVAILABLE_SORT_KEYS)}.")
        schedule = profiler_kwargs.get("schedule")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"`schedule` must be a callable (e.g. `torch.profiler.schedule(...)`), got {schedule!r}.")
        if group_by_input_shapes:
            profiler_kwargs.setdefault("record_shapes", True)
        self._table_kwargs = dict(table_kwargs or {})
        _check_table_kwargs(self._table_kwargs)
        self._group_by_input_shapes = group_by_input_shapes
        self._emit_nvtx = emit_nvtx
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key
        self._record_module_names = record_module_names
        # `schedule=None` given explicitly records every step (torch's default); not given: the bounded default
        self._own_schedule = "schedule" not in profiler_kwargs
        self._profiler_kwargs = profiler_kwargs
        self._lightning_module: Optional[torch.nn.Module] = None
        self.profiler: Any = None  # the entered torch profiler (or emit_nvtx context)
        #: the events of the last recording (kept after the stage ends, until the next ``setup``)
        self.function_events: Any = None
        self._records: dict[str, Any] = {}
        self._register: Optional[RegisterRecordFunction] = None
        self._schedule: Optional[_StepsOfEachKind] = None
        self._open_steps = 0
        self._traces_written = 0

    # ------------------------------------------------------------------------------------------------------------------
    # recording
    # ------------------------------------------------------------------------------------------------------------------

    def _step_kind(self, action_name: str) -> Optional[str]:
        return next((kind for kind in self.STEP_FUNCTIONS if action_name.endswith(kind)), None)

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        super().setup(stage, local_rank=local_rank, log_dir=log_dir)
        self.function_events = None  # a new stage reports only what it records
        self._traces_written = 0

    def start(self, action_name: str) -> None:
        kind = self._step_kind(action_name)
        if self.profiler is None:
            self._start_profiler()
        if kind is not None:
            if self._open_steps == 0 and self._schedule is not None and self._schedule.kind != kind:
                # another kind of step begins (e.g. validation inside fit): its own count decides whether it records
                self._schedule.kind = kind
                if self._schedule.action(kind) != self.profiler.current_action:
                    self.profiler.step()
            self._open_steps += 1
        if action_name not in self._records:
            from torch.autograd.profiler import record_function

            record = record_function(_PROFILE_PREFIX + action_name)
            record.__enter__()
            self._records[action_name] = record

    def stop(self, action_name: str) -> None:
        record = self._records.pop(action_name, None)
        if record is not None:
            record.__exit__(None, None, None)
        kind = self._step_kind(action_name)
        if self.profiler is None or kind is None or self._open_steps == 0:
            return
        self._open_steps -= 1
        # Only the outermost step action advances the schedule, in case step hooks are profiled at several levels.
        if self._open_steps == 0 and not self._emit_nvtx:
            if self._schedule is not None:
                self._schedule.finished(kind)
            self.profiler.step()

    def _start_profiler(self) -> None:
        import torch

        if self._emit_nvtx:
            kwargs = {"record_shapes": self._profiler_kwargs.get("record_shapes", False)}
            self.profiler = torch.autograd.profiler.emit_nvtx(**kwargs)
        else:
            kwargs = self._torch_profiler_kwargs()
            self.profiler = torch.profiler.profile(**kwargs)
        self.profiler.__enter__()
        if self._record_module_names and self._lightning_module is not None:
            self._register = RegisterRecordFunction(self._lightning_module)
            self._register.__enter__()

    def _torch_profiler_kwargs(self) -> dict[str, Any]:
        import torch

        accepted = inspect.signature(torch.profiler.profile.__init__).parameters
        kwargs = {key: value for key, value in self._profiler_kwargs.items() if key in accepted}
        if kwargs.get("activities") is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            kwargs["activities"] = activities
        self._schedule = None
        if self._own_schedule:
            self._schedule = _StepsOfEachKind(_DEFAULT_RECORD_STEPS)
            kwargs["schedule"] = self._schedule
            if "acc_events" in accepted:
                # the default schedule traces each kind of step in its own cycle: keep them all (bounded)
                kwargs.setdefault("acc_events", True)
        if kwargs.get("on_trace_ready") is None:
            kwargs["on_trace_ready"] = self._on_trace_ready
        return kwargs

    def _on_trace_ready(self, profiler: Any) -> None:
        if not self._export_to_chrome:
            return
        if not self.dirpath:
            rank_zero_warn("PyTorchProfiler could not export the Chrome trace: no `dirpath` (or trainer `log_dir`).")
            return
        suffix = f".{self._traces_written}" if self._traces_written else ""
        dirpath = os.fspath(self.dirpath)
        os.makedirs(dirpath, exist_ok=True)
        profiler.export_chrome_trace(os.path.join(dirpath, self._prepare_filename(extension=f"{suffix}.pt.trace.json")))
        self._traces_written += 1

    def _stop_profiler(self) -> None:
        for record in self._records.values():
            record.__exit__(None, None, None)
        self._records = {}
        if self._register is not None:
            self._register.__exit__(None, None, None)
            self._register = None
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.__exit__(None, None, None)
            if not self._emit_nvtx:
                try:
                    self.function_events = profiler.events()
                except (AssertionError, RuntimeError):  # nothing was ever recorded
                    self.function_events = None
        self._schedule = None
        self._open_steps = 0

    # ------------------------------------------------------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------------------------------------------------------

    def _default_sort_key(self) -> str:
        import torch

        activities = self._profiler_kwargs.get("activities")
        if activities is None:
            uses_cuda = torch.cuda.is_available()
        else:
            uses_cuda = torch.profiler.ProfilerActivity.CUDA in activities
        return "cuda_time_total" if uses_cuda else "cpu_time_total"

    def summary(self) -> str:
        """Stop profiling and return the op table of the recorded events (``""`` if none, or with ``emit_nvtx``).
        Asked again after the stage ended, it returns the same table."""
        self._stop_profiler()
        if self._emit_nvtx or not self.function_events:
            return ""
        averages = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes)
        table = averages.table(sort_by=self._sort_by_key or self._default_sort_key(), row_limit=self._row_limit,
                               **self._table_kwargs)
        return self._stats_to_str({"records": table})

    def teardown(self, stage: Optional[str]) -> None:
        """Stop the torch profiler (if running) and remove the module hooks; the recorded events stay in
        :attr:`function_events` until the next :meth:`setup`."""
        self._stop_profiler()
        super().teardown(stage)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Live profiler objects cannot be pickled (e.g. when the trainer is sent to spawned workers).
        state.update(profiler=None, function_events=None, _records={}, _register=None, _schedule=None, _open_steps=0)
        state["_lightning_module"] = None
        return state


def _check_table_kwargs(table_kwargs: dict[str, Any]) -> None:
    """Raise a ``KeyError`` for a ``table_kwargs`` key that ``EventList.table`` does not take from the user."""
    if not table_kwargs:
        return
    from torch.autograd.profiler_util import EventList

    for key in table_kwargs:
        if key in ("sort_by", "row_limit"):
            raise KeyError(
                f"Found invalid table_kwargs key: {key}. This is already a positional argument of the Profiler "
                f"(pass `{'sort_by_key' if key == 'sort_by' else 'row_limit'}=` to PyTorchProfiler instead)."
            )
        valid = set(inspect.signature(EventList.table).parameters) - {"self", "sort_by", "row_limit"}
        if key not in valid:
            raise KeyError(f"Found invalid table_kwargs key: {key}. Should be one of {sorted(valid)}.")
