"""A progress bar drawn with ``rich``, redrawn on a timer (``rich`` is imported only when the bar is created)."""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.callbacks.progress.progress_bar import ProgressBar, _convert_inf, _in_notebook, _LineReporter
from featherlight.utilities.model_helpers import is_overridden

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_monotonic = time.monotonic


def _rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


@dataclass
class RichProgressBarTheme:
    """Styles of the parts of a :class:`RichProgressBar` (any ``rich`` style string or ``Style``)."""

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


def _columns(theme: RichProgressBarTheme) -> list:
    """The bar's columns: description, bar, ``n/total``, ``elapsed • remaining``, speed, metrics."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class _Batches(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "--" if task.total is None or not math.isfinite(task.total) else int(task.total)
            return Text(f"{int(task.completed)}/{total}", style=theme.batch_progress)

    class _Time(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            remaining = task.time_remaining if task.total is not None else None
            elapsed_s = "-:--:--" if elapsed is None else str(timedelta(seconds=int(elapsed)))
            remaining_s = "-:--:--" if remaining is None else str(timedelta(seconds=int(remaining)))
            return Text(f"{elapsed_s} • {remaining_s}", style=theme.time)

    class _Speed(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                elapsed = task.finished_time if task.finished else task.elapsed
                speed = task.completed / elapsed if elapsed else None
            return Text(f"{speed if speed is not None else 0.0:>.2f}it/s", style=theme.processing_speed)

    class _Metrics(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(task.fields.get("metrics", ""), justify="left", style=theme.metrics)

    return [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                  pulse_style=theme.progress_bar_pulse),
        _Batches(),
        _Time(),
        _Speed(),
        _Metrics(),
    ]


class RichProgressBar(ProgressBar):
    """A progress bar drawn with `rich <https://github.com/Textualize/rich>`_ (``pip install rich``).

    Like :class:`~featherlight.callbacks.TQDMProgressBar`, it redraws on a timer, not every batch: at
    most ``refresh_rate`` times per second and at most every ``min_interval`` seconds, plus on the last
    batch of a loop; metrics are read only when it redraws. Off a terminal it prints short progress
    lines at most every ``non_tty_interval`` seconds and at epoch end instead of animating.

    Args:
        refresh_rate: maximum redraws per second; ``0`` disables the bar.
        leave: keep each finished epoch's bar on screen.
        theme: styles of the bar's parts.
        console_kwargs: arguments for the ``rich.console.Console`` the bar draws on.
        min_interval: minimum seconds between two redraws.
        non_tty_interval: seconds between two progress lines when the output is not a terminal.
        interactive: draw (``True``), print lines (``False``) or decide from the console (``None``).

    Raises:
        ModuleNotFoundError: if ``rich`` is not installed.
    """

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: Optional[RichProgressBarTheme] = None,
        console_kwargs: Optional[dict[str, Any]] = None,
        min_interval: float = 0.1,
        non_tty_interval: float = 30.0,
        interactive: Optional[bool] = None,
    ) -> None:
        if not _rich_available():
            raise ModuleNotFoundError("`RichProgressBar` requires `rich`: pip install rich")
        super().__init__()
        if refresh_rate < 0:
            raise ValueError(f"`refresh_rate` must be non-negative, got {refresh_rate!r}.")
        self._refresh_rate = refresh_rate
        self._leave = leave
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = console_kwargs or {}
        self._min_interval = float(min_interval)
        self._interactive_arg = interactive
        self._interactive = True
        self._console: Any = None
        self.progress: Any = None
        self.train_progress_bar_id: Any = None
        self.val_sanity_progress_bar_id: Any = None
        self.val_progress_bar_id: Any = None
        self.test_progress_bar_id: Any = None
        self.predict_progress_bar_id: Any = None
        self._eval_task: Any = None
        self._train_due = math.inf
        self._train_total: Union[int, float] = -1
        self._train_n = 0
        self._eval_due = math.inf
        self._eval_total: Union[int, float] = -1
        self._eval_n = 0
        self._train_lines = _LineReporter(float(non_tty_interval))
        self._eval_lines = _LineReporter(float(non_tty_interval))

    def __getstate__(self) -> dict:
        state = dict(vars(self))
        state["progress"] = None  # holds locks and the console
        state["_console"] = None
        state["_trainer"] = None  # set again by the next run's `setup`
        return state

    # ------------------------------------------------------------------ properties
    @property
    def refresh_rate(self) -> float:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    @property
    def _interval(self) -> float:
        return max(self._min_interval, 1.0 / self._refresh_rate) if self._refresh_rate > 0 else math.inf

    @property
    def _drawing(self) -> bool:
        return self._interactive and self.is_enabled

    @property
    def _lines(self) -> bool:
        return not self._interactive and self.is_enabled

    def _task(self, task_id: Any) -> Any:
        if self.progress is None or task_id is None:
            raise TypeError(f"The `{self.__class__.__name__}` has no such bar at the moment.")
        return next(t for t in self.progress.tasks if t.id == task_id)

    @property
    def train_progress_bar(self) -> Any:
        return self._task(self.train_progress_bar_id)

    @property
    def val_sanity_check_bar(self) -> Any:
        return self._task(self.val_sanity_progress_bar_id)

    @property
    def val_progress_bar(self) -> Any:
        return self._task(self.val_progress_bar_id)

    @property
    def test_progress_bar(self) -> Any:
        return self._task(self.test_progress_bar_id)

    # ------------------------------------------------------------------ rich plumbing
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from rich import get_console, reconfigure

        if self._console_kwargs:
            reconfigure(**self._console_kwargs)
        self._console = get_console()
        arg = self._interactive_arg
        self._interactive = (self._console.is_terminal or _in_notebook()) if arg is None else bool(arg)

    def _init_progress(self) -> None:
        if not self._drawing or self.progress is not None:
            return
        from rich.progress import Progress

        self._reset_ids()
        self.progress = Progress(*self.configure_columns(), console=self._console, auto_refresh=False)
        self.progress.start()

    def configure_columns(self, trainer: Any = None) -> list:
        """The columns of the bar; override to change them (the metrics column reads ``task.fields["metrics"]``)."""
        return _columns(self.theme)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            try:
                self.progress.stop()
            except Exception:  # a broken console must not mask the run's own outcome
                pass
            self.progress = None
        self._reset_ids()

    def _reset_ids(self) -> None:
        self.train_progress_bar_id = None
        self.val_sanity_progress_bar_id = None
        self.val_progress_bar_id = None
        self.test_progress_bar_id = None
        self.predict_progress_bar_id = None
        self._eval_task = None

    def refresh(self) -> None:
        if self.progress is not None:
            self.progress.refresh()

    def _add_task(self, total: Optional[Union[int, float]], description: str, visible: bool = True) -> Any:
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        return self.progress.add_task(description, total=_convert_inf(total), visible=visible, metrics="")

    def _start_task(self, task_id: Any, total: Any, description: str) -> Any:
        """Reuse ``task_id`` for a new pass (a new task when the total is unknown, which rich cannot reset to)."""
        total = _convert_inf(total)
        if task_id is not None and total is not None:
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.progress.reset(task_id, total=total, description=description, visible=True)
            return task_id
        if task_id is not None:
            self.progress.update(task_id, visible=False)
        return self._add_task(total, description)

    def _metrics_text(self, trainer: "Trainer", pl_module: "LightningModule") -> str:
        parts = []
        fmt = self.theme.metrics_format
        for name, value in self.get_metrics(trainer, pl_module).items():
            if not isinstance(value, str):
                try:
                    value = f"{value:{fmt}}"
                except (TypeError, ValueError):
                    value = str(value)
            parts.append(f"{name}: {value}")
        return self.theme.metrics_text_delimiter.join(parts)

    # ------------------------------------------------------------------ training
    def _train_description(self, trainer: "Trainer") -> str:
        desc = f"Epoch {trainer.current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            desc += f"/{trainer.max_epochs - 1}"
        width = len(self.validation_description)
        return f"{desc:{width}}" if len(desc) < width else desc

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._init_progress()

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        total = _convert_inf(self.total_train_batches)
        self._train_n, self._train_total, self._train_due = 0, -1, math.inf
        if self._drawing:
            if self._leave and self.train_progress_bar_id is not None:
                self._stop_progress()
            self._init_progress()
            self.train_progress_bar_id = self._start_task(
                self.train_progress_bar_id, total, self._train_description(trainer))
            self.refresh()
            self._train_total = total if total is not None else -1
            self._train_due = _monotonic() + self._interval
        elif self._lines:
            self._train_lines.begin(self._train_description(trainer).rstrip(), total)
            self._train_due = self._train_lines.next_due

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, RichProgressBar)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = batch_idx + 1
        self._train_n = n
        if n != self._train_total and _monotonic() < self._train_due:
            return
        self._refresh_train(trainer, pl_module, n)

    def _refresh_train(self, trainer: "Trainer", pl_module: "LightningModule", n: int) -> None:
        now = _monotonic()
        if self._drawing and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=n,
                                 metrics=self._metrics_text(trainer, pl_module))
            self.refresh()
            self._train_due = now + self._interval
        elif self._lines:
            self._train_lines.n = n
            self._train_lines.emit(self.get_metrics(trainer, pl_module), now)
            self._train_due = self._train_lines.next_due
        else:
            self._train_due, self._train_total = math.inf, -1

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._drawing and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=self._train_n,
                                 metrics=self._metrics_text(trainer, pl_module))
            self.refresh()
        elif self._lines:
            self._train_lines.n = self._train_n
            self._train_lines.emit(self.get_metrics(trainer, pl_module))
        self._train_due, self._train_total = math.inf, -1

    # ------------------------------------------------------------------ evaluation
    def _begin_eval(self, trainer: "Trainer", dataloader_idx: int) -> None:
        self._current_eval_dataloader_idx = dataloader_idx
        if trainer.sanity_checking:
            attr, desc, loaders = "val_sanity_progress_bar_id", self.sanity_check_description, \
                trainer.num_sanity_val_batches
            total = self.total_val_batches_current_dataloader
        elif trainer.testing:
            attr, desc, loaders = "test_progress_bar_id", self.test_description, trainer.num_test_batches
            total = self.total_test_batches_current_dataloader
        elif trainer.predicting:
            attr, desc, loaders = "predict_progress_bar_id", self.predict_description, trainer.num_predict_batches
            total = self.total_predict_batches_current_dataloader
        else:
            attr, desc, loaders = "val_progress_bar_id", self.validation_description, trainer.num_val_batches
            total = self.total_val_batches_current_dataloader
        if isinstance(loaders, list) and len(loaders) > 1:
            desc = f"{desc} DataLoader {dataloader_idx}"
        total = _convert_inf(total)
        self._eval_n, self._eval_total, self._eval_due = 0, -1, math.inf
        if self._drawing:
            self._init_progress()
            task = self._start_task(getattr(self, attr), total, desc)
            setattr(self, attr, task)
            self._eval_task = task
            self.refresh()
            self._eval_total = total if total is not None else -1
            self._eval_due = _monotonic() + self._interval
        elif self._lines:
            self._eval_lines.begin(desc, total)
            self._eval_due = self._eval_lines.next_due

    def _eval_batch_end(self, batch_idx: int, dataloader_idx: int) -> None:
        if dataloader_idx != self._current_eval_dataloader_idx:
            self._begin_eval(self.trainer, dataloader_idx)
        n = batch_idx + 1
        self._eval_n = n
        if n != self._eval_total and _monotonic() < self._eval_due:
            return
        now = _monotonic()
        if self._drawing and self.progress is not None and self._eval_task is not None:
            self.progress.update(self._eval_task, completed=n)
            self.refresh()
            self._eval_due = now + self._interval
        elif self._lines:
            self._eval_lines.n = n
            self._eval_lines.emit(None, now)
            self._eval_due = self._eval_lines.next_due
        else:
            self._eval_due, self._eval_total = math.inf, -1

    def _end_eval(self, final_line: bool, hide: bool) -> None:
        if self._drawing and self.progress is not None and self._eval_task is not None:
            self.progress.update(self._eval_task, completed=self._eval_n, visible=not hide)
            self.refresh()
        elif self._lines and (final_line or self._eval_lines.printed) and self._current_eval_dataloader_idx is not None:
            self._eval_lines.n = self._eval_n
            self._eval_lines.emit()
        self._eval_lines.stop()
        self._eval_task = None
        self._eval_due, self._eval_total = math.inf, -1
        self.reset_dataloader_idx_tracker()

    def on_sanity_check_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._init_progress()

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._begin_eval(trainer, 0)

    def on_validation_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        in_fit = trainer.state.fn == "fit"
        self._end_eval(final_line=not in_fit, hide=in_fit)
        if in_fit and self._drawing and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, metrics=self._metrics_text(trainer, pl_module))
            self.refresh()

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._begin_eval(trainer, 0)

    def on_test_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_eval(final_line=True, hide=False)

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._begin_eval(trainer, 0)

    def on_predict_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_eval(final_line=True, hide=False)

    # ------------------------------------------------------------------ end of a run
    def teardown(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._stop_progress()

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        self._stop_progress()
        self._train_due = self._eval_due = math.inf

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the live display (rich's console keeps the bar intact)."""
        if self._console is not None and self.progress is not None:
            kwargs.pop("flush", None)
            kwargs.pop("file", None)
            self._console.print(*args, **kwargs)
        else:
            print(*args, **kwargs)
