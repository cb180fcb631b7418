import logging
import time
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import Timer
from featherlight.trainer.states import RunningStage  # Lightning's path
from featherlight.utilities.exceptions import MisconfigurationException


class SlowModule(L.LightningModule):
    def __init__(self, delay=0.01):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.delay = delay

    def training_step(self, batch, batch_idx):
        time.sleep(self.delay)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(self.delay)

    def test_step(self, batch, batch_idx):
        time.sleep(self.delay)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=5):
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=1)


def trainer_with(callbacks=None, **kwargs):
    kwargs.setdefault("max_epochs", 1000)
    return L.Trainer(callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


@pytest.mark.parametrize(
    "duration, seconds",
    [("00:00:00:01", 1), ("01:02:03:04", 93784), (timedelta(minutes=2), 120), ({"hours": 1, "seconds": 5}, 3605),
     (None, None)],
)
def test_duration_formats(duration, seconds):
    assert Timer(duration)._duration == seconds


@pytest.mark.parametrize("bad", ["1:00:00", "00:00:00:1", "abc", "00:00:60"])
def test_invalid_duration(bad):
    with pytest.raises(MisconfigurationException, match="DD:HH:MM:SS"):
        Timer(bad)


def test_invalid_interval():
    with pytest.raises(MisconfigurationException, match="interval"):
        Timer(interval="batch")


def test_step_interval_stops_mid_epoch():
    timer = Timer(duration=timedelta(seconds=0.25), interval="step")
    trainer = trainer_with([timer])
    start = time.monotonic()
    trainer.fit(SlowModule(), loader(5))
    assert time.monotonic() - start < 5  # max_epochs=1000 would take > 50 s
    assert trainer.global_step < 200
    assert timer.time_elapsed() >= 0.25
    assert timer.time_remaining() <= 0
    assert trainer.should_stop


def test_epoch_interval_stops_at_epoch_end():
    timer = Timer(duration=timedelta(seconds=0.2), interval="epoch")
    trainer = trainer_with([timer])
    trainer.fit(SlowModule(), loader(7))
    assert 0 < trainer.global_step < 500
    assert trainer.global_step % 7 == 0  # only whole epochs


def test_max_time_flag_adds_a_step_timer():
    trainer = trainer_with(max_time={"seconds": 0.2})
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0]._interval == "step" and timers[0]._duration == 0.2
    trainer.fit(SlowModule(), loader(5))
    assert trainer.global_step < 200


def test_stage_times():
    timer = Timer()
    trainer = trainer_with([timer], max_epochs=2)
    assert timer.start_time("train") is None and timer.time_elapsed("train") == 0
    model = SlowModule()
    trainer.fit(model, loader(3), loader(2))
    for stage in ("train", RunningStage.VALIDATING):
        assert timer.start_time(stage) is not None and timer.end_time(stage) is not None
        assert timer.end_time(stage) >= timer.start_time(stage)
    assert timer.time_elapsed("train") >= 6 * 0.01
    assert timer.time_elapsed("validate") >= 2 * 0.01  # the last validation run
    assert timer.time_elapsed("train") > timer.time_elapsed("validate")
    assert timer.start_time("test") is None
    trainer.test(model, loader(2), verbose=False)
    assert timer.time_elapsed("test") >= 0.02
    assert timer.time_remaining() is None
    with pytest.raises(ValueError):
        timer.time_elapsed("nonsense")


def test_elapsed_time_is_kept_across_resume(tmp_path):
    timer = Timer()
    trainer = trainer_with([timer], max_epochs=1)
    trainer.fit(SlowModule(), loader(5))
    elapsed = timer.time_elapsed()
    state = timer.state_dict()
    assert set(state["time_elapsed"]) == {s.value for s in RunningStage}
    assert state["time_elapsed"]["train"] == pytest.approx(elapsed, abs=1e-3)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)

    # the restored budget is already spent: training stops before doing anything
    resumed = Timer(duration=timedelta(seconds=elapsed * 0.9))
    trainer = trainer_with([resumed], max_epochs=3)
    trainer.fit(SlowModule(), loader(5), ckpt_path=path)
    assert trainer.global_step == 5
    assert resumed.time_elapsed() >= elapsed

    fresh = Timer()
    fresh.load_state_dict(state)
    assert fresh.time_elapsed() == pytest.approx(elapsed, abs=1e-3)


def test_verbose_message(caplog):
    logger = logging.getLogger("featherlight")
    handler_records = []

    class H(logging.Handler):
        def emit(self, record):
            handler_records.append(record.getMessage())

    handler = H()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        trainer_with([Timer(duration=timedelta(seconds=0.05))]).fit(SlowModule(), loader(5))
        trainer_with([Timer(duration=timedelta(seconds=0.05), verbose=False)]).fit(SlowModule(), loader(5))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sum("Time limit reached" in m for m in handler_records) == 1


def test_per_step_check_is_cheap():
    timer = Timer(duration=timedelta(hours=1))
    trainer = trainer_with([timer])
    timer.on_train_start(trainer, None)
    start = time.perf_counter()
    for i in range(20_000):
        timer.on_train_batch_end(trainer, None, None, None, i)
    assert (time.perf_counter() - start) / 20_000 < 20e-6
    assert not trainer.should_stop


def test_lightning_parity_of_state_dict_keys():
    pl = pytest.importorskip("lightning.pytorch")
    ours = Timer(duration="00:00:01:00").state_dict()
    theirs = pl.callbacks.Timer(duration="00:00:01:00").state_dict()
    assert set(ours["time_elapsed"]) == set(theirs["time_elapsed"])


def test_distributed_ranks_sync_rarely_and_stop_together(monkeypatch):
    """With several processes rank 0's decision is broadcast, about once per second, not every batch."""
    from types import SimpleNamespace

    from featherlight.callbacks import timer as timer_module

    clock = [100.0]
    monkeypatch.setattr(timer_module, "_monotonic", lambda: clock[0])
    broadcasts = []

    def broadcast(obj, src=0):
        broadcasts.append(obj)
        return obj

    trainer = SimpleNamespace(world_size=2, should_stop=False, strategy=SimpleNamespace(broadcast=broadcast))
    timer = Timer(duration=timedelta(seconds=3), verbose=False)
    timer.on_fit_start(trainer, None)
    broadcasts.clear()
    timer.on_train_start(trainer, None)
    stopped_at = None
    for batch in range(1000):
        clock[0] += 0.01  # 10 ms per batch
        timer.on_train_batch_end(trainer, None, None, None, batch)
        if trainer.should_stop:
            stopped_at = batch + 1
            break
    assert stopped_at is not None and 300 <= stopped_at <= 302
    assert 3 <= len(broadcasts) <= 8  # ~1 per simulated second, instead of ~300
