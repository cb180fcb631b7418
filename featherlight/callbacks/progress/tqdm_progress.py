"""The default progress bar, drawn with ``tqdm`` and redrawn on a timer rather than every batch."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.callbacks.progress.progress_bar import (
    ProgressBar,
    _convert_inf,
    _LineReporter,
    _stream_is_interactive,
)
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_debug

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_PAD_SIZE = 5
_monotonic = time.monotonic
_TQDM_CLASS: Any = None


def _tqdm_class() -> Any:
    """The ``Tqdm`` class, built on first use so that importing featherlight does not import tqdm."""
    global _TQDM_CLASS
    if _TQDM_CLASS is None:
        import importlib.util

        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.auto import tqdm as base
        else:
            from tqdm import tqdm as base

        class Tqdm(base):  # type: ignore[misc, valid-type]
            """tqdm whose float (and numeric string) postfix values are padded to a fixed width, so the
            bar does not jump about as a value gains or loses digits (``0.5`` shows as ``0.500``)."""

            @staticmethod
            def format_num(n: Union[int, float, str]) -> str:
                text = n if isinstance(n, str) else base.format_num(n)
                if not isinstance(n, (float, str)) or "e" in text or len(text) >= _PAD_SIZE:
                    return text
                if "." not in text:
                    try:
                        if not math.isfinite(float(text)):
                            return text
                    except ValueError:
                        return text
                    text += "."
                return text.ljust(_PAD_SIZE, "0")

        Tqdm.__module__ = __name__
        Tqdm.__qualname__ = "Tqdm"
        _TQDM_CLASS = Tqdm
    return _TQDM_CLASS


def __getattr__(name: str) -> Any:
    if name == "Tqdm":
        return _tqdm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TQDMProgressBar(ProgressBar):
    """The default progress bar: ``tqdm`` bars on ``stdout`` for the sanity check, training (``Epoch N``),
    validation (nested under the training bar during fit), testing and prediction.

    **Refresh on a timer.** Unlike Lightning's bar, which redraws (and reads the metrics) after every
    ``refresh_rate``-th batch, this one redraws at most once every ``min_interval`` seconds, and always
    on the first and the last batch of a loop. Between redraws a batch costs one ``time.monotonic()`` call
    and a comparison; the ``prog_bar`` metrics (whose reading turns tensors into numbers, a host-device
    sync) are read only when the bar is redrawn, after a validation during ``fit``, and at epoch end.
    ``refresh_rate`` keeps its meaning: ``0`` hides the bar, ``k > 1`` additionally limits redraws to
    every ``k``-th batch.

    **No animation off a terminal.** When ``stdout`` is not a terminal (CI logs, a file, a pipe; a
    notebook counts as a terminal) no bar is drawn. Instead a short line such as::

        Epoch 3/9: 120/500 [00:03<00:09, 40.12it/s] loss=0.1234 v_num=0

    is printed at most every ``non_tty_interval`` seconds and at the end of each epoch (and of a
    ``validate``/``test``/``predict`` run), so logs are not flooded. The bars still exist (built by the
    ``init_*_tqdm`` methods, but disabled), with their totals and counts, and the metrics are read at the
    same points as on a terminal. Pass ``interactive=True`` or ``False`` to override the detection (e.g.
    ``True`` for an IDE console that handles ``\\r``).

    Args:
        refresh_rate: redraw at most every this many batches; ``0`` disables the bar.
        process_position: offset the bars by this many lines (for several bars at once).
        leave: keep the finished bar of each epoch on screen.
        min_interval: minimum seconds between two redraws of a bar.
        non_tty_interval: seconds between two progress lines when the output is not a terminal.
        interactive: draw animated bars (``True``), print lines (``False``), or decide from ``stdout`` (``None``).

    Customise a bar by overriding ``init_train_tqdm`` and friends::

        class MyBar(TQDMProgressBar):
            def init_validation_tqdm(self):
                bar = super().init_validation_tqdm()
                bar.set_description("running validation ...")
                return bar
    """

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        min_interval: float = 0.1,
        non_tty_interval: float = 30.0,
        interactive: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"`refresh_rate` must be a non-negative int, got {refresh_rate!r}.")
        if min_interval < 0 or non_tty_interval < 0:
            raise ValueError("`min_interval` and `non_tty_interval` must be non-negative.")
        self._refresh_rate = self._resolve_refresh_rate(refresh_rate)
        self._process_position = process_position
        self._leave = leave
        self._min_interval = float(min_interval)
        self._non_tty_interval = float(non_tty_interval)
        self._interactive_arg = interactive
        self._interactive = True
        self._quiet = False  # building a bar that must not draw (output is not a terminal)
        self._train_progress_bar: Any = None
        self._val_progress_bar: Any = None
        self._test_progress_bar: Any = None
        self._predict_progress_bar: Any = None
        self._eval_bar: Any = None
        # per-batch fast path: the next time a redraw is due, and the loop's last batch number
        # (-1 when unknown) that always redraws; `inf`/-1 while the bar is off.
        self._train_due = math.inf
        self._train_total: Union[int, float] = -1
        self._train_n = 0
        self._eval_due = math.inf
        self._eval_total: Union[int, float] = -1
        self._eval_n = 0
        self._train_lines = _LineReporter(self._non_tty_interval)
        self._eval_lines = _LineReporter(self._non_tty_interval)

    def __getstate__(self) -> dict:
        # tqdm objects hold locks and file handles; the trainer is set again by the next run's `setup`
        state = dict(vars(self))
        for key in ("_trainer", "_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar",
                    "_eval_bar"):
            state[key] = None
        return state

    # ------------------------------------------------------------------ properties
    def _bar(self, attr: str) -> Any:
        bar = getattr(self, attr)
        if bar is None:
            raise TypeError(f"The `{self.__class__.__name__}.{attr}` reference has not been set yet.")
        return bar

    @property
    def train_progress_bar(self) -> Any:
        return self._bar("_train_progress_bar")

    @train_progress_bar.setter
    def train_progress_bar(self, bar: Any) -> None:
        self._train_progress_bar = bar

    @property
    def val_progress_bar(self) -> Any:
        return self._bar("_val_progress_bar")

    @val_progress_bar.setter
    def val_progress_bar(self, bar: Any) -> None:
        self._val_progress_bar = bar

    @property
    def test_progress_bar(self) -> Any:
        return self._bar("_test_progress_bar")

    @test_progress_bar.setter
    def test_progress_bar(self, bar: Any) -> None:
        self._test_progress_bar = bar

    @property
    def predict_progress_bar(self) -> Any:
        return self._bar("_predict_progress_bar")

    @predict_progress_bar.setter
    def predict_progress_bar(self, bar: Any) -> None:
        self._predict_progress_bar = bar

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def min_interval(self) -> float:
        return self._min_interval

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        # while a bar is built off a terminal, the `init_*_tqdm` methods build it disabled (progress goes out as lines)
        return not self.is_enabled or self._quiet

    @property
    def _drawing(self) -> bool:
        """Animated bars are on screen (enabled, on a terminal)."""
        return self._interactive and self.is_enabled

    @property
    def _lines(self) -> bool:
        """Progress goes out as text lines (enabled, not a terminal)."""
        return not self._interactive and self.is_enabled

    # ------------------------------------------------------------------ bar factories (override to customise)
    def init_sanity_tqdm(self) -> Any:
        """The bar of the validation sanity check."""
        return _tqdm_class()(
            desc=self.sanity_check_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    def init_train_tqdm(self) -> Any:
        """The training bar."""
        return _tqdm_class()(
            desc=self.train_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_predict_tqdm(self) -> Any:
        """The prediction bar."""
        return _tqdm_class()(
            desc=self.predict_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_validation_tqdm(self) -> Any:
        """The validation bar (nested under the training bar, and removed when done, during fit)."""
        has_main_bar = self.trainer.state.fn != "validate"
        return _tqdm_class()(
            desc=self.validation_description,
            position=2 * self.process_position + has_main_bar,
            disable=self.is_disabled,
            leave=not has_main_bar,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    def init_test_tqdm(self) -> Any:
        """The test bar."""
        return _tqdm_class()(
            desc=self.test_description,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    def _new_bar(self, factory: Any) -> Any:
        """The bar from ``factory`` (an ``init_*_tqdm`` method): drawing on a terminal, else built disabled, so the
        ``*_progress_bar`` references, totals and counts are there either way."""
        if self._drawing:
            return factory()
        self._quiet = True
        try:
            return factory()
        finally:
            self._quiet = False

    # ------------------------------------------------------------------ run set-up
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        arg = self._interactive_arg
        self._interactive = _stream_is_interactive(sys.stdout) if arg is None else bool(arg)

    # ------------------------------------------------------------------ sanity check
    def on_sanity_check_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.val_progress_bar = self._new_bar(self.init_sanity_tqdm)
        self.train_progress_bar = _tqdm_class()(disable=True)  # placeholder until training starts

    def on_sanity_check_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(self._val_progress_bar)
        self._close(self._train_progress_bar)
        self._eval_due, self._eval_total = math.inf, -1

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.train_progress_bar = self._new_bar(self.init_train_tqdm)

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._leave:
            # each epoch gets its own bar, left on screen when the epoch ends; a bar that never moved (the one from
            # `on_train_start`) is cleared away instead
            old = self._train_progress_bar
            if old is not None and old.n == 0:
                old.leave = False
                self._close(old)
            self.train_progress_bar = self._new_bar(self.init_train_tqdm)
        total = _convert_inf(self.total_train_batches)
        bar = self.train_progress_bar
        bar.reset()
        bar.total = total
        bar.initial = 0
        bar.set_description(f"Epoch {trainer.current_epoch}")
        self._train_n = 0
        self._train_total = -1
        self._train_due = math.inf
        if self.is_enabled:
            # the first batch redraws (then the timer decides), and so does the last
            self._train_total = total if total is not None else -1
            self._train_due = 0.0
            if self._lines:
                self._train_lines.begin(self._epoch_line_description(trainer), total)

    def _epoch_line_description(self, trainer: "Trainer") -> str:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            return f"Epoch {trainer.current_epoch}/{max_epochs - 1}"
        return f"Epoch {trainer.current_epoch}"

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, TQDMProgressBar)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = batch_idx + 1
        self._train_n = n
        if n != self._train_total and _monotonic() < self._train_due:
            return
        self._refresh_train(trainer, pl_module, n)

    def _refresh_train(self, trainer: "Trainer", pl_module: "LightningModule", n: int) -> None:
        rate = self._refresh_rate
        if rate > 1 and n % rate and n != self._train_total:
            return
        now = _monotonic()
        bar = self._train_progress_bar
        if bar is None or not self.is_enabled:
            self._train_due, self._train_total = math.inf, -1
            return
        bar.n = n
        metrics = self.get_metrics(trainer, pl_module)
        bar.set_postfix(metrics, refresh=False)
        if self._drawing:
            bar.refresh()
            self._train_due = now + self._min_interval
        else:
            # off a terminal the metrics are read at the same points, but a line goes out only on its interval
            lines = self._train_lines
            lines.n = n
            if now >= lines.next_due:
                lines.emit(metrics, now)
            self._train_due = lines.next_due

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        bar = self._train_progress_bar
        if bar is not None:
            bar.n = self._train_n
            if self.is_enabled:
                metrics = self.get_metrics(trainer, pl_module)
                bar.set_postfix(metrics, refresh=False)
                if self._drawing:
                    bar.refresh()
                else:
                    self._train_lines.n = self._train_n
                    self._train_lines.emit(metrics)
        self._train_due, self._train_total = math.inf, -1
        if self._leave:
            self._close(bar)

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(self._train_progress_bar)
        self._train_due, self._train_total = math.inf, -1

    # ------------------------------------------------------------------ evaluation (shared)
    def _begin_eval(self, trainer: "Trainer", dataloader_idx: int) -> None:
        self._current_eval_dataloader_idx = dataloader_idx
        if trainer.sanity_checking:
            desc, total = self.sanity_check_description, self.total_val_batches_current_dataloader
        elif trainer.testing:
            desc, total = self.test_description, self.total_test_batches_current_dataloader
        elif trainer.predicting:
            desc, total = self.predict_description, self.total_predict_batches_current_dataloader
        else:
            desc, total = self.validation_description, self.total_val_batches_current_dataloader
        total = _convert_inf(total)
        self._eval_n = 0
        self._eval_due, self._eval_total = math.inf, -1
        bar = self._eval_bar
        if bar is not None:
            bar.reset()
            bar.total = total
            bar.initial = 0
            bar.set_description(f"{desc} DataLoader {dataloader_idx}")
        if self._drawing and bar is not None:
            self._eval_total = total if total is not None else -1
            self._eval_due = _monotonic() + self._min_interval
        elif self._lines:
            self._eval_lines.begin(f"{desc} DataLoader {dataloader_idx}", total)
            self._eval_due = self._eval_lines.next_due

    def _eval_batch_end(self, batch_idx: int, dataloader_idx: int) -> None:
        if dataloader_idx != self._current_eval_dataloader_idx:
            self._begin_eval(self.trainer, dataloader_idx)
        n = batch_idx + 1
        self._eval_n = n
        if n != self._eval_total and _monotonic() < self._eval_due:
            return
        rate = self._refresh_rate
        if rate > 1 and n % rate and n != self._eval_total:
            return
        now = _monotonic()
        if self._drawing and self._eval_bar is not None:
            self._eval_bar.n = n
            self._eval_bar.refresh()
            self._eval_due = now + self._min_interval
        elif self._lines:
            self._eval_lines.n = n
            self._eval_lines.emit(None, now)
            self._eval_due = self._eval_lines.next_due
        else:
            self._eval_due, self._eval_total = math.inf, -1

    def _end_eval(self, bar: Any, final_line: bool) -> None:
        if bar is not None and bar.n != self._eval_n:
            bar.n = self._eval_n
            if self._drawing and not bar.disable:
                bar.refresh()
        if self._lines and (final_line or self._eval_lines.printed) and self._current_eval_dataloader_idx is not None:
            self._eval_lines.n = self._eval_n
            self._eval_lines.emit()
        self._close(bar)
        self._eval_lines.stop()
        self._eval_bar = None
        self._eval_due, self._eval_total = math.inf, -1
        self.reset_dataloader_idx_tracker()

    # ------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.sanity_checking:
            self.val_progress_bar = self._new_bar(self.init_validation_tqdm)
        self._eval_bar = self._val_progress_bar
        self._begin_eval(trainer, 0)

    def on_validation_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_eval(self._val_progress_bar, final_line=trainer.state.fn == "validate")
        bar = self._train_progress_bar
        if trainer.state.fn == "fit" and self.is_enabled and bar is not None:
            # the training bar shows the validation's values from now on (drawn when it is on a terminal)
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=self._drawing)

    # ------------------------------------------------------------------ test
    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.test_progress_bar = self._new_bar(self.init_test_tqdm)
        self._eval_bar = self._test_progress_bar
        self._begin_eval(trainer, 0)

    def on_test_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_eval(self._test_progress_bar, final_line=True)

    # ------------------------------------------------------------------ predict
    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.predict_progress_bar = self._new_bar(self.init_predict_tqdm)
        self._eval_bar = self._predict_progress_bar
        self._begin_eval(trainer, 0)

    def on_predict_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(batch_idx, dataloader_idx)

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end_eval(self._predict_progress_bar, final_line=True)

    # ------------------------------------------------------------------ misc
    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        for bar in (self._val_progress_bar, self._test_progress_bar, self._predict_progress_bar,
                    self._train_progress_bar):
            self._close(bar)
        self._train_due = self._eval_due = math.inf

    @staticmethod
    def _close(bar: Any) -> None:
        if bar is not None:
            try:
                bar.close()
            except Exception:  # a broken terminal must not mask the run's own outcome
                pass

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print through ``tqdm.write`` (above the bars being drawn, which are redrawn below), or plainly when
        the bar is disabled. ``print``'s ``file`` and ``end`` are passed on."""
        if not self.is_enabled:
            print(*args, sep=sep, **kwargs)
            return
        kwargs.pop("flush", None)  # tqdm.write flushes
        active = None
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar,
                    self._predict_progress_bar):
            if bar is not None and not bar.disable:
                active = bar
                break
        (active if active is not None else _tqdm_class()).write(sep.join(map(str, args)), **kwargs)

    @staticmethod
    def _resolve_refresh_rate(refresh_rate: int) -> int:
        # (as Lightning: `TQDM_MINITERS` raises the rate, even from 0, which turns the bar on)
        if os.getenv("COLAB_GPU") and refresh_rate == 1:
            rank_zero_debug("Running on Colab: redrawing the progress bar at most every 20 batches.")
            return 20
        if "TQDM_MINITERS" in os.environ:
            return max(int(os.environ["TQDM_MINITERS"]), refresh_rate)
        return refresh_rate


def convert_inf(x: Optional[Union[int, float]]) -> Optional[Union[int, float]]:
    """``None`` for an infinite or NaN total (tqdm's way of saying "unknown")."""
    return _convert_inf(x)
