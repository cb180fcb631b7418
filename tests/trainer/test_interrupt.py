"""SIGTERM (or another configured signal) saves a resumable checkpoint and exits non-zero; Ctrl-C runs
on_exception and teardown, then re-raises. The resumed run ends exactly where an uninterrupted one does."""
import os
import signal
import sys

import pytest
import torch

import featherlight as L

sys.path.insert(0, os.path.dirname(__file__))
from test_exact_resume import Model, Recorder, _assert_same, _run, _trainer  # noqa: E402


class SendSignal(L.Callback):
    def __init__(self, hook, epoch, batch, sig=signal.SIGTERM):
        self.hook, self.epoch, self.batch, self.sig = hook, epoch, batch, sig

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook == "train" and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.sig)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.hook == "val" and not trainer.sanity_checking and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.sig)


def _interrupted_then_resumed(tmp_path, hook, epoch, batch, sig=signal.SIGTERM, **kwargs):
    torch.manual_seed(1)
    logger = Recorder()
    with pytest.raises(SystemExit) as exit_info:
        _trainer(logger, [SendSignal(hook, epoch, batch, sig)], default_root_dir=tmp_path, **kwargs).fit(Model())
    assert exit_info.value.code == 128 + sig
    path = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert path.is_file()
    torch.manual_seed(999)
    logger2 = Recorder()
    resumed = Model()
    _trainer(logger2, default_root_dir=tmp_path, **kwargs).fit(resumed, ckpt_path=str(path))
    return resumed, logger.rows + logger2.rows


@pytest.mark.parametrize("hook,epoch,batch", [("train", 1, 3), ("val", 1, 1), ("train", 0, 10)])
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tmp_path, hook, epoch, batch):
    _assert_same(_run(), _interrupted_then_resumed(tmp_path, hook, epoch, batch))


def test_configured_signal_and_the_users_handler_is_chained(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(SystemExit) as exit_info:
            _trainer(Recorder(), [SendSignal("train", 0, 2, signal.SIGUSR1)], default_root_dir=tmp_path,
                     interrupt_signals=["SIGUSR1"]).fit(Model())
        assert exit_info.value.code == 128 + signal.SIGUSR1
        assert seen == [signal.SIGUSR1]
        assert (tmp_path / "checkpoints" / "interrupted.ckpt").is_file()
        assert signal.getsignal(signal.SIGUSR1) is not None  # the user's handler is back in place
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ckpt_path_last_finds_the_interrupted_checkpoint(tmp_path):
    with pytest.raises(SystemExit):
        _trainer(Recorder(), [SendSignal("train", 0, 2)], default_root_dir=tmp_path).fit(Model())
    trainer = _trainer(Recorder(), default_root_dir=tmp_path, max_epochs=1)
    trainer.fit(Model(), ckpt_path="last")
    assert trainer.ckpt_path.endswith("interrupted.ckpt")


def test_keyboard_interrupt_runs_on_exception_and_teardown_then_reraises():
    calls = []

    class Watch(L.Callback):
        def on_exception(self, trainer, pl_module, exception):
            calls.append("on_exception")

        def teardown(self, trainer, pl_module, stage):
            calls.append(f"teardown:{stage}")

    class Interrupted(Model):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    trainer = _trainer(False, [Watch()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(Interrupted())
    assert calls == ["on_exception", "teardown:fit"] and trainer.interrupted


def test_bad_signal_name():
    from featherlight.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="SIGNOPE"):
        L.Trainer(interrupt_signals=["SIGNOPE"])


def test_a_requeued_slurm_job_resumes_by_itself(tmp_path, monkeypatch):
    """SIGUSR1 before the requeue writes interrupted.ckpt; the requeued job (SLURM_RESTART_COUNT=1) resumes from
    it without ckpt_path and ends exactly where an uninterrupted run does."""
    reference = _run()
    torch.manual_seed(1)
    logger = Recorder()
    with pytest.raises(SystemExit):
        _trainer(logger, [SendSignal("train", 1, 3, signal.SIGUSR1)], default_root_dir=tmp_path,
                 interrupt_signals=["SIGUSR1"]).fit(Model())
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    torch.manual_seed(999)
    logger2 = Recorder()
    resumed = Model()
    trainer = _trainer(logger2, default_root_dir=tmp_path, interrupt_signals=["SIGUSR1"])
    trainer.fit(resumed)
    assert trainer.ckpt_path.endswith("interrupted.ckpt")
    _assert_same(reference, (resumed, logger.rows + logger2.rows))


def test_a_first_start_does_not_resume(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        _trainer(Recorder(), [SendSignal("train", 0, 2)], default_root_dir=tmp_path).fit(Model())
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    trainer = _trainer(Recorder(), default_root_dir=tmp_path, max_epochs=1)
    trainer.fit(Model())
    assert trainer.ckpt_path is None


def test_a_lost_keyboard_interrupt_is_raised_again_at_the_next_batch():
    """The interpreter raised KeyboardInterrupt inside a finalizer and dropped it; featherlight's SIGINT handler
    had recorded the signal, so the loop raises it again at the next batch boundary."""
    steps = []

    class LoseIt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(batch_idx)
            if batch_idx == 2:
                trainer.interrupts.received = signal.SIGINT  # what the handler left after the lost exception

    trainer = L.Trainer(max_epochs=1, limit_train_batches=10, limit_val_batches=0, logger=False, callbacks=[LoseIt()],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(Model())
    assert steps == [0, 1, 2] and trainer.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back


@pytest.mark.slow
def test_ctrl_c_is_never_lost(tmp_path):
    """Stress: SIGINT at many moments of a fit whose steps run finalizers; every run must stop (before the fix,
    about half of these runs trained to the end and exited 0)."""
    import subprocess
    import time

    script = os.path.join(os.path.dirname(__file__), "scripts", "sigint_fit.py")
    outcomes = []
    for i, delay in enumerate([0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8]):
        tag = str(tmp_path / f"run{i}")
        proc = subprocess.Popen([sys.executable, script, tag, "50"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not os.path.exists(tag + ".started") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        outcomes.append((delay, code, os.path.exists(tag + ".finished")))
    assert all(code != 0 and not finished for _, code, finished in outcomes), outcomes


def test_ctrl_c_is_both_a_keyboard_interrupt_and_lightnings_system_exit():
    """Lightning ends an interrupted fit with ``sys.exit(1)``; featherlight raises one exception that is both the
    KeyboardInterrupt (never swallowed) and a SystemExit (exit status 130), the original as its cause."""
    from featherlight.utilities.exceptions import TrainingInterrupted

    class Interrupted(Model):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    trainer = _trainer(False, [])
    with pytest.raises(SystemExit) as info:
        trainer.fit(Interrupted())
    assert isinstance(info.value, KeyboardInterrupt) and isinstance(info.value, TrainingInterrupted)
    assert info.value.code == 130 and type(info.value.__cause__) is KeyboardInterrupt and trainer.interrupted
