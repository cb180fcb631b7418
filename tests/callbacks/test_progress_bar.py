import copy
import io
import pickle
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from featherlight.callbacks.progress import progress_bar as pb_module
from featherlight.callbacks.progress.progress_bar import get_standard_metrics
from featherlight.loggers.csv_logs import CSVLogger
from featherlight.utilities.exceptions import MisconfigurationException


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.layer(batch[0]).pow(2).mean())

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class NoValModule(TinyModule):
    validation_step = L.LightningModule.validation_step


def loader(n_batches, batch_size=2):
    return DataLoader(TensorDataset(torch.randn(n_batches * batch_size, 4)), batch_size=batch_size)


class TTY(io.StringIO):
    def isatty(self):
        return True


class CountingBar(TQDMProgressBar):
    """Counts how often the bar reads the metrics (which it does exactly when it redraws)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_reads = 0

    def get_metrics(self, trainer, pl_module):
        self.metric_reads += 1
        return super().get_metrics(trainer, pl_module)


def make_trainer(bar, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("logger", False)
    return L.Trainer(callbacks=[bar], enable_checkpointing=False, enable_model_summary=False, **kwargs)


# ---------------------------------------------------------------------------------------------- refresh on a timer
def test_redraws_on_a_timer_not_every_step(capsys):
    steps = 400
    bar = CountingBar(interactive=True, min_interval=3600.0)
    trainer = make_trainer(bar, max_epochs=2)
    trainer.fit(NoValModule(), loader(steps))
    # per epoch: the first and the last batch redraw, and the epoch end sets the final postfix -> 3 reads, not 400
    assert bar.metric_reads == 6
    train_bar = bar.train_progress_bar
    assert train_bar.n == steps and train_bar.total == steps
    assert "loss" in train_bar.postfix
    out = capsys.readouterr().out
    assert "Epoch 1" in out and f"{steps}/{steps}" in out


def test_default_interval_reads_metrics_far_less_than_steps(capsys):
    steps = 600
    bar = CountingBar(interactive=True)  # min_interval=0.1 s
    trainer = make_trainer(bar)
    start = time.monotonic()
    trainer.fit(NoValModule(), loader(steps))
    elapsed = time.monotonic() - start
    # Lightning's bar reads the metrics (a host sync) after every batch: `steps` times
    assert bar.metric_reads <= elapsed / 0.1 + 3
    assert bar.metric_reads < steps / 4


def test_zero_interval_redraws_every_step_and_refresh_rate_still_applies(capsys):
    steps = 40
    bar = CountingBar(interactive=True, min_interval=0.0)
    make_trainer(bar).fit(NoValModule(), loader(steps))
    assert bar.metric_reads == steps + 1  # every batch, plus epoch end

    bar = CountingBar(refresh_rate=10, interactive=True, min_interval=0.0)
    make_trainer(bar).fit(NoValModule(), loader(steps))
    assert bar.metric_reads == steps // 10 + 1


def test_refresh_rate_zero_disables(capsys):
    bar = CountingBar(refresh_rate=0, interactive=True)
    assert bar.is_disabled
    trainer = make_trainer(bar)
    trainer.fit(TinyModule(), loader(20), loader(5))
    trainer.test(trainer.lightning_module, loader(5), verbose=False)
    assert bar.metric_reads == 0
    assert capsys.readouterr().out == ""


def test_disable_enable():
    bar = TQDMProgressBar()
    assert bar.is_enabled
    bar.disable()
    assert bar.is_disabled and not bar.is_enabled
    bar.enable()
    assert bar.is_enabled


def test_fast_path_per_batch_cost():
    bar = TQDMProgressBar(interactive=True)
    bar._train_due = float("inf")  # mid-epoch, redraw not due
    bar._train_total = 10**9
    start = time.perf_counter()
    for i in range(20_000):
        bar.on_train_batch_end(None, None, None, None, i)
    per_call = (time.perf_counter() - start) / 20_000
    assert per_call < 20e-6  # typically well under 1 us


# ---------------------------------------------------------------------------------------------- not a terminal
def test_non_tty_prints_a_few_lines(capsys, tmp_path):
    bar = TQDMProgressBar()  # stdout is captured by pytest: not a terminal
    trainer = make_trainer(bar, max_epochs=3, logger=CSVLogger(tmp_path, version=7))
    trainer.fit(TinyModule(), loader(300), loader(10))
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out  # no animation
    lines = [line for line in out.splitlines() if line.strip()]
    # one line per epoch (the run is much shorter than the 30 s line interval)
    assert len(lines) == 3, lines
    for epoch, line in enumerate(lines):
        assert line.startswith(f"Epoch {epoch}/2: 300/300 [")
        assert "loss=" in line and "val_loss=" in line and "v_num=7" in line


def test_non_tty_interval_lines_and_eval_lines(capsys):
    bar = TQDMProgressBar(non_tty_interval=0.0)
    trainer = make_trainer(bar)
    trainer.fit(NoValModule(), loader(5))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" [")[0] for line in lines] == [f"Epoch 0/0: {n}/5" for n in (1, 2, 3, 4, 5, 5)]

    bar = TQDMProgressBar()
    trainer = make_trainer(bar)
    trainer.validate(TinyModule(), loader(8), verbose=False)
    trainer.test(TinyModule(), loader(6), verbose=False)
    trainer.predict(TinyModule(), loader(4))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "Validation DataLoader 0: 8/8", "Testing DataLoader 0: 6/6", "Predicting DataLoader 0: 4/4"
    ]


def test_interactive_detection(monkeypatch):
    bar = TQDMProgressBar()
    trainer = make_trainer(bar)
    monkeypatch.setattr(sys, "stdout", TTY())
    bar.setup(trainer, TinyModule(), "fit")
    assert bar._interactive
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    bar.setup(trainer, TinyModule(), "fit")
    assert not bar._interactive
    forced = TQDMProgressBar(interactive=True)
    forced.setup(trainer, TinyModule(), "fit")
    assert forced._interactive


# ---------------------------------------------------------------------------------------------- bars and totals
def test_bars_totals_and_descriptions(capsys):
    seen = []

    class Spy(Callback):
        def __init__(self, bar):
            self.bar = bar

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            vb = self.bar.val_progress_bar
            seen.append((trainer.sanity_checking, vb.desc, vb.total, self.bar.total_val_batches_current_dataloader))

    bar = TQDMProgressBar(interactive=True)
    trainer = L.Trainer(callbacks=[bar, Spy(bar)], max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_train_batches=7, num_sanity_val_steps=1)
    trainer.fit(TinyModule(), loader(10), [loader(3), loader(4)])
    assert bar.total_train_batches == 7
    assert bar.total_val_batches == 7
    assert set(seen) == {
        (True, "Sanity Checking DataLoader 0: ", 1, 1),
        (True, "Sanity Checking DataLoader 1: ", 1, 1),
        (False, "Validation DataLoader 0: ", 3, 3),
        (False, "Validation DataLoader 1: ", 4, 4),
    }
    assert bar.train_progress_bar.desc == "Epoch 0: "


def test_total_train_batches_capped_by_max_steps_without_epoch_limit():
    bar = TQDMProgressBar()
    trainer = SimpleNamespace(max_epochs=-1, max_steps=15, global_step=10, num_training_batches=8)
    bar._trainer = trainer
    assert bar.total_train_batches == 5
    trainer.global_step = 0
    assert bar.total_train_batches == 8


def test_unknown_length_shows_no_total(capsys):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            for _ in range(9):
                yield torch.randn(4)

    class M(NoValModule):
        def training_step(self, batch, batch_idx):
            return self.layer(batch).pow(2).mean()

    bar = TQDMProgressBar(interactive=True)
    make_trainer(bar).fit(M(), DataLoader(Stream(), batch_size=None))
    assert bar.train_progress_bar.total is None
    assert bar.train_progress_bar.n == 9


def test_leave_keeps_one_bar_per_epoch(capsys):
    bars = []

    class Recording(TQDMProgressBar):
        def init_train_tqdm(self):
            bar = super().init_train_tqdm()
            bars.append(bar)
            return bar

    make_trainer(Recording(leave=True, interactive=True), max_epochs=3).fit(NoValModule(), loader(4))
    # as in Lightning, `on_train_start` builds a bar and each epoch its own; the unused first one is cleared away
    assert len(bars) == 4
    assert [b.n for b in bars] == [0, 4, 4, 4]
    assert bars[0].leave is False and all(b.leave for b in bars[1:])


def test_print_goes_through_the_bar(capsys):
    class Printing(NoValModule):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                self.print("hello from step", batch_idx)
            return super().training_step(batch, batch_idx)

    make_trainer(TQDMProgressBar(interactive=True)).fit(Printing(), loader(3))
    assert "hello from step 1" in capsys.readouterr().out
    make_trainer(TQDMProgressBar()).fit(Printing(), loader(3))
    assert "hello from step 1\n" in capsys.readouterr().out


def test_bar_survives_pickle_and_deepcopy(capsys):
    bar = TQDMProgressBar(interactive=True)
    make_trainer(bar).fit(NoValModule(), loader(3))
    assert pickle.loads(pickle.dumps(bar))._train_progress_bar is None
    copy.deepcopy(bar)


def test_exception_closes_bars(capsys):
    class Boom(NoValModule):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    bar = TQDMProgressBar(interactive=True)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(bar).fit(Boom(), loader(5))
    assert bar.train_progress_bar.disable  # closed


def test_trainer_default_and_disabled_bar():
    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.progress_bar_callback is None
    with pytest.raises(MisconfigurationException):
        L.Trainer(callbacks=[TQDMProgressBar()], enable_progress_bar=False)


def test_tqdm_number_padding():
    from featherlight.callbacks.progress.tqdm_progress import Tqdm

    assert Tqdm.format_num(0.5) == "0.500"
    assert Tqdm.format_num("1") == "1.000"
    assert Tqdm.format_num(3) == "3"
    assert Tqdm.format_num("abc") == "abc"
    assert Tqdm.format_num(1.2345e-9) == "1.23e-9"


# ---------------------------------------------------------------------------------------------- metrics
class _Logger:
    def __init__(self, version):
        self.version = version


@pytest.mark.parametrize(
    "versions, expected",
    [([], {}), ([3], {"v_num": 3}), (["run_abcdef"], {"v_num": "cdef"}), ([1, 2, 1], {"v_num": "1_2"}),
     ([None], {}), ([""], {})],
)
def test_standard_metrics(versions, expected):
    trainer = SimpleNamespace(loggers=[_Logger(v) for v in versions])
    assert get_standard_metrics(trainer) == expected
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics as pl_metrics

    assert pl_metrics(trainer) == expected


def test_get_metrics_merges_and_warns_on_clash(recwarn):
    pb_module._warnings.clean()
    bar = TQDMProgressBar()
    trainer = SimpleNamespace(loggers=[_Logger(1)], progress_bar_metrics={"loss": 0.5, "v_num": 9})
    with pytest.warns(UserWarning, match="v_num"):
        assert bar.get_metrics(trainer, None) == {"v_num": 9, "loss": 0.5}


def test_base_class_api():
    class Minimal(ProgressBar):
        def __init__(self):  # no super().__init__(): the class defaults keep it working
            pass

    bar = Minimal()
    with pytest.raises(TypeError, match="has not been set"):
        _ = bar.trainer
    assert bar.is_enabled and bar.has_dataloader_changed(0) and not bar.has_dataloader_changed(0)
    bar.reset_dataloader_idx_tracker()
    assert bar.has_dataloader_changed(0)
    assert (bar.train_description, bar.validation_description, bar.test_description, bar.predict_description,
            bar.sanity_check_description) == ("Training", "Validation", "Testing", "Predicting", "Sanity Checking")


# ---------------------------------------------------------------------------------------------- rich
def test_rich_progress_bar_draws_on_a_timer():
    pytest.importorskip("rich")
    import rich

    buffer = io.StringIO()
    reads = []

    class Counting(RichProgressBar):
        def get_metrics(self, trainer, pl_module):
            reads.append(1)
            return super().get_metrics(trainer, pl_module)

    bar = Counting(min_interval=3600.0, interactive=True,
                   console_kwargs={"file": buffer, "force_terminal": True, "width": 160})
    try:
        trainer = make_trainer(bar, max_epochs=2)
        trainer.fit(TinyModule(), loader(200), loader(20))
        trainer.test(trainer.lightning_module, loader(10), verbose=False)
    finally:
        rich.reconfigure()  # restore the global console
    out = buffer.getvalue()
    assert "Epoch 1/1" in out and "200/200" in out and "loss:" in out and "Testing" in out
    # per epoch: last batch, after validation, epoch end -> 3 reads, not 200
    assert len(reads) == 6


def test_rich_progress_bar_lines_off_terminal(capsys):
    pytest.importorskip("rich")
    bar = RichProgressBar(interactive=False)
    make_trainer(bar, max_epochs=2).fit(NoValModule(), loader(50))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 0/1: 50/50 [") and "loss=" in lines[0]


def test_rich_missing(monkeypatch):
    from featherlight.callbacks.progress import rich_progress

    monkeypatch.setattr(rich_progress, "_rich_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="requires `rich`"):
        RichProgressBar()


def test_importing_featherlight_does_not_import_rich():
    import subprocess

    code = "import sys, featherlight, featherlight.callbacks; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------- Lightning's observable API
class ReadPoints(TQDMProgressBar):
    """Records (stage, global step) at every read of the metrics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = []

    def get_metrics(self, trainer, pl_module):
        self.reads.append((trainer.state.stage.value, trainer.global_step))
        return super().get_metrics(trainer, pl_module)


@pytest.mark.parametrize("interactive", [True, False])
def test_metrics_are_read_at_the_same_points_on_and_off_a_terminal(capsys, interactive):
    bar = ReadPoints(interactive=interactive, min_interval=3600.0)
    make_trainer(bar, max_epochs=2, num_sanity_val_steps=1).fit(TinyModule(), loader(3), loader(2))
    assert bar.reads == [
        ("sanity_check", 0),  # the sanity check's validation end
        ("train", 1), ("train", 3), ("validate", 3), ("train", 3),  # first, last batch; validation end; epoch end
        ("train", 4), ("train", 6), ("validate", 6), ("train", 6),
    ]


def test_off_a_terminal_the_bars_exist_with_their_totals(capsys):
    built = []

    class Recording(TQDMProgressBar):
        def init_train_tqdm(self):
            built.append("train")
            return super().init_train_tqdm()

        def init_validation_tqdm(self):
            built.append("validation")
            return super().init_validation_tqdm()

    bar = Recording()  # stdout is captured by pytest: not a terminal
    trainer = make_trainer(bar, num_sanity_val_steps=0)
    trainer.fit(TinyModule(), loader(5), loader(3))
    assert built == ["train", "validation"]
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (5, 5)
    assert (bar.val_progress_bar.total, bar.val_progress_bar.n) == (3, 3)
    assert bar.train_progress_bar.disable  # lines are printed instead
    trainer.test(trainer.lightning_module, loader(4), verbose=False)
    assert (bar.test_progress_bar.total, bar.test_progress_bar.n) == (4, 4)
    out = capsys.readouterr().out
    assert "\r" not in out


def test_off_a_terminal_leave_builds_a_bar_per_epoch(capsys):
    calls = []

    class Recording(TQDMProgressBar):
        def init_train_tqdm(self):
            calls.append(1)
            return super().init_train_tqdm()

    make_trainer(Recording(leave=True), max_epochs=3).fit(NoValModule(), loader(2))
    assert len(calls) == 4


def test_print_goes_through_tqdm_write_off_a_terminal(monkeypatch, capsys):
    from featherlight.callbacks.progress.tqdm_progress import Tqdm

    written = []
    monkeypatch.setattr(Tqdm, "write", classmethod(lambda cls, s, **kw: written.append((s, kw))))

    class Printing(NoValModule):
        def training_step(self, batch, batch_idx):
            self.print("step", batch_idx, end="", flush=True)
            return super().training_step(batch, batch_idx)

    make_trainer(TQDMProgressBar()).fit(Printing(), loader(2))
    assert written == [("step 0", {"end": ""}), ("step 1", {"end": ""})]
    written.clear()
    make_trainer(TQDMProgressBar(refresh_rate=0)).fit(Printing(), loader(1))
    assert written == [] and "step 0" in capsys.readouterr().out


@pytest.mark.parametrize(("rate", "env", "expected"), [(0, "1", 1), (1, "0", 1), (2, "1", 2), (1, "3", 3)])
def test_tqdm_miniters_raises_the_refresh_rate(monkeypatch, rate, env, expected):
    monkeypatch.setenv("TQDM_MINITERS", env)
    bar = TQDMProgressBar(refresh_rate=rate)
    assert bar.refresh_rate == expected and bar.is_enabled


def test_one_progress_bar_only():
    with pytest.raises(MisconfigurationException, match="^You added multiple progress bar callbacks"):
        L.Trainer(callbacks=[TQDMProgressBar(), TQDMProgressBar()], logger=False)
    with pytest.raises(MisconfigurationException, match="enable_progress_bar=False` but found `TQDMProgressBar"):
        L.Trainer(callbacks=[TQDMProgressBar()], enable_progress_bar=False, logger=False)
