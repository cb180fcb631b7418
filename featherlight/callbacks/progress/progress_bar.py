"""The progress-bar base class, the standard metrics it shows, and the plain-line reporter used off-terminal."""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.callbacks.callback import Callback
from featherlight.utilities.rank_zero import WarningCache

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_warnings = WarningCache()


class ProgressBar(Callback):
    """Base class of progress bars: it knows the trainer and how many batches each stage has.

    Subclass it for a custom bar. ``enable()``/``disable()`` toggle the display (the trainer's tools
    may switch a bar off for a while), ``get_metrics`` returns what the bar shows next to the counter,
    and ``print`` writes a message without breaking the bar.

    Example::

        class PercentBar(ProgressBar):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if self.is_enabled:
                    sys.stdout.write(f"{100 * (batch_idx + 1) / self.total_train_batches:.1f}%\\r")
    """

    # class-level defaults keep subclasses working even if they skip ``super().__init__()``
    _trainer: Optional["Trainer"] = None
    _current_eval_dataloader_idx: Optional[int] = None
    _enabled: bool = True

    def __init__(self) -> None:
        self._trainer = None
        self._current_eval_dataloader_idx = None
        self._enabled = True

    # ------------------------------------------------------------------ trainer and state
    @property
    def trainer(self) -> "Trainer":
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    def enable(self) -> None:
        """Show the bar again after :meth:`disable`."""
        self._enabled = True

    def disable(self) -> None:
        """Stop showing the bar (called on every process but global rank 0)."""
        self._enabled = False

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    # ------------------------------------------------------------------ descriptions
    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    # ------------------------------------------------------------------ totals
    @property
    def total_train_batches(self) -> Union[int, float]:
        """Training batches of the current epoch (``inf`` for a loader without length).

        With ``max_epochs=-1`` and ``max_steps`` set, capped by the steps that remain.
        """
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            return min(trainer.num_training_batches, trainer.max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches(self) -> Union[int, float]:
        """Validation batches over all validation dataloaders; 0 in an epoch that does not validate."""
        trainer = self.trainer
        every = getattr(trainer, "check_val_every_n_epoch", None)
        if trainer.state.fn == "fit" and every is not None and (trainer.current_epoch + 1) % every != 0:
            return 0
        batches = trainer.num_val_batches
        return sum(batches) if isinstance(batches, list) else batches

    def _current_of(self, batches: Any) -> Union[int, float]:
        if isinstance(batches, list):
            if not batches:
                return 0
            idx = self._current_eval_dataloader_idx or 0
            return batches[idx] if idx < len(batches) else 0
        return batches

    @property
    def total_val_batches_current_dataloader(self) -> Union[int, float]:
        """Batches of the validation dataloader in progress (sanity-check batches during the sanity check)."""
        trainer = self.trainer
        return self._current_of(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)

    @property
    def total_test_batches_current_dataloader(self) -> Union[int, float]:
        """Batches of the test dataloader in progress."""
        return self._current_of(self.trainer.num_test_batches)

    @property
    def total_predict_batches_current_dataloader(self) -> Union[int, float]:
        """Batches of the predict dataloader in progress."""
        return self._current_of(self.trainer.num_predict_batches)

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        """Record ``dataloader_idx`` as the current one; True if it differs from the previous one."""
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    # ------------------------------------------------------------------ output
    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar (the base class just prints)."""
        print(*args, **kwargs)

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    def get_metrics(self, trainer: "Trainer", pl_module: "LightningModule") -> dict[str, Union[int, str, float, dict]]:
        """What the bar shows next to the counter: the standard items (``v_num``) and the ``prog_bar`` metrics.

        Reading ``trainer.progress_bar_metrics`` turns tensors into numbers (a host sync), so bars call
        this only when they redraw. Override it to change what is shown::

            def get_metrics(self, trainer, pl_module):
                items = super().get_metrics(trainer, pl_module)
                items.pop("v_num", None)
                return items
        """
        standard = get_standard_metrics(trainer)
        pbar = trainer.progress_bar_metrics
        clash = sorted(standard.keys() & pbar.keys())
        if clash:
            _warnings.warn(
                f"The progress bar already shows a metric named {', '.join(repr(c) for c in clash)}; the value "
                f"logged with `self.log({clash[0]!r}, ..., prog_bar=True)` replaces it. Rename the metric or "
                "override `get_metrics()` of the progress bar if that is not what you want."
            )
        return {**standard, **pbar}


def get_standard_metrics(trainer: "Trainer") -> dict[str, Union[int, str]]:
    """The items every bar shows: ``v_num``, the version of the logger(s), when there is a logger.

    With several loggers their distinct versions are joined with ``_``; a string version is cut to
    its last 4 characters.
    """
    items: dict[str, Union[int, str]] = {}
    loggers = trainer.loggers
    if not loggers:
        return items
    if len(loggers) == 1:
        version = loggers[0].version
    else:
        version = "_".join(dict.fromkeys(str(logger.version) for logger in loggers))
    if version not in ("", None):
        items["v_num"] = version[-4:] if isinstance(version, str) else version
    return items


# ====================================================================== helpers shared by the bars
def _convert_inf(x: Optional[Union[int, float]]) -> Optional[Union[int, float]]:
    """``None`` for an unknown (infinite or NaN) total, which bar libraries expect."""
    if x is None or (isinstance(x, float) and (math.isinf(x) or math.isnan(x))):
        return None
    return x


def _stream_is_interactive(stream: Any) -> bool:
    """True when ``stream`` is a terminal, or output goes to a notebook (which renders ``\\r`` updates)."""
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or exotic streams
        pass
    return _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")


def _format_interval(seconds: float) -> str:
    """``MM:SS`` or ``H:MM:SS``, like tqdm."""
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _LineReporter:
    """Progress as short text lines, for output that is not a terminal (CI logs, files, pipes).

    One line per stage at most every ``interval`` seconds (checked with one ``time.monotonic()``
    comparison per batch by the caller via :attr:`next_due`), plus the lines the bar asks for
    explicitly (epoch end, end of an evaluation)::

        Epoch 3/9: 120/500 [00:03<00:09, 40.12it/s] loss=0.1234 v_num=0
    """

    __slots__ = ("desc", "total", "start", "n", "next_due", "interval", "printed")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.desc = ""
        self.total: Optional[Union[int, float]] = None
        self.start = 0.0
        self.n = 0
        self.next_due = math.inf
        self.printed = False

    def begin(self, desc: str, total: Optional[Union[int, float]]) -> None:
        now = time.monotonic()
        self.desc, self.total, self.start, self.n = desc, _convert_inf(total), now, 0
        self.next_due = now + self.interval
        self.printed = False

    def stop(self) -> None:
        self.next_due = math.inf

    def line(self, metrics: Optional[dict] = None, now: Optional[float] = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 0.0)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        total = self.total
        if total is not None:
            counter = f"{self.n}/{total}"
            remaining = (total - self.n) / rate if rate > 0 else None
            timing = f"{_format_interval(elapsed)}<{_format_interval(remaining) if remaining is not None else '?'}"
        else:
            counter = f"{self.n}"
            timing = _format_interval(elapsed)
        text = f"{self.desc}: {counter} [{timing}, {rate:.2f}it/s]"
        if metrics:
            text += " " + " ".join(f"{k}={_format_metric(v)}" for k, v in metrics.items())
        return text

    def emit(self, metrics: Optional[dict] = None, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        print(self.line(metrics, now), file=sys.stdout, flush=True)
        self.printed = True
        self.next_due = now + self.interval
