"""``trainer.fit_loop``: the read-only view of the loop counters reads what Lightning's fit loop reports at the same
hooks (compared live when Lightning is installed) and refuses writes with the flag to set instead."""
import pytest
import torch
from torch.utils.data import DataLoader

import featherlight as fl
from featherlight.demos.boring_classes import BoringModel, RandomDataset

HOOKS = ("on_train_epoch_start", "on_train_batch_start", "on_train_batch_end", "on_validation_start",
         "on_train_epoch_end", "on_fit_end")


def _read(trainer):
    loop = trainer.fit_loop
    cur, tot = loop.epoch_progress.current, loop.epoch_progress.total
    return (
        # Lightning's fit turns an unset max_epochs into -1 and min_epochs into 0 (trainer flags the view passes on)
        -1 if loop.max_epochs is None else loop.max_epochs, loop.min_epochs or 0, loop.max_steps, loop.min_steps,
        (cur.ready, cur.started, cur.processed, cur.completed),
        (tot.ready, tot.started, tot.processed, tot.completed),
        loop.batch_idx, loop.total_batch_idx,
        loop.epoch_loop.batch_idx, loop.epoch_loop.total_batch_idx, loop.epoch_loop.global_step,
        loop.epoch_loop._batches_that_stepped, loop.epoch_loop.max_steps, loop.epoch_loop.min_steps,
    )


def _recorder(callback_base):
    class Recorder(callback_base):
        def __init__(self):
            self.seen = []

    for hook in HOOKS:
        def method(self, trainer, *args, _hook=hook):
            self.seen.append((_hook, _read(trainer)))

        setattr(Recorder, hook, method)
    return Recorder()


def _model(base):
    class Model(base):
        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 20), batch_size=4)

        def val_dataloader(self):
            return DataLoader(RandomDataset(32, 8), batch_size=4)

    return Model()


def _run(lib, **flags):
    from importlib import import_module

    boring = import_module(f"{lib.__name__}.demos.boring_classes")
    torch.manual_seed(0)
    recorder = _recorder(lib.Callback)
    trainer = lib.Trainer(callbacks=[recorder], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, **flags)
    before = _read(trainer)
    trainer.fit(_model(boring.BoringModel))
    return before, recorder.seen, _read(trainer)


SCENARIOS = [
    dict(max_epochs=2),
    dict(max_epochs=3, accumulate_grad_batches=2, val_check_interval=2),
    dict(max_steps=7, min_epochs=1, min_steps=2),  # stops inside the second epoch
    dict(max_epochs=2, limit_train_batches=3, limit_val_batches=0),
]


@pytest.mark.parametrize("flags", SCENARIOS)
def test_same_counters_as_lightnings_fit_loop(flags):
    pl = pytest.importorskip("lightning.pytorch")
    ours = _run(fl, **flags)
    theirs = _run(pl, **flags)
    assert ours[0] == theirs[0]
    if flags.get("max_steps", -1) != -1:
        # a fit that max_steps ends inside an epoch: Lightning still reports the batch it stopped at, the view -1
        # (documented); everything else is the same
        def without_batch_idx(values):
            return values[:6] + values[7:8] + values[9:]

        assert ours[2][6] == ours[2][8] == -1
        assert without_batch_idx(ours[2]) == without_batch_idx(theirs[2])
        assert ours[1][-1][0] == "on_fit_end"
        assert without_batch_idx(ours[1].pop()[1]) == without_batch_idx(theirs[1].pop()[1])
    else:
        assert ours[2] == theirs[2]
    ours_seen = [(hook, values) for hook, values in ours[1]]
    theirs_seen = [(hook, values) for hook, values in theirs[1]]
    assert [h for h, _ in ours_seen] == [h for h, _ in theirs_seen]
    for (hook, mine), (_, expected) in zip(ours_seen, theirs_seen):
        if hook == "on_train_epoch_start":
            # Lightning has counted the epoch as `ready` (not yet `started`) here; the view counts it from the first
            # batch on (documented)
            ready, started, processed, completed = expected[4]
            expected = expected[:4] + ((ready - 1, started, processed, completed),) * 2 + expected[6:]
        assert mine == expected, hook


def test_counters_without_lightning():
    before, seen, after = _run(fl, max_epochs=2)
    assert before == (2, 0, -1, None, (0, 0, 0, 0), (0, 0, 0, 0), -1, -1, -1, -1, 0, 0, -1, None)
    batch_ends = [values for hook, values in seen if hook == "on_train_batch_end"]
    assert [v[6] for v in batch_ends] == [0, 1, 2, 3, 4] * 2  # batch_idx in the epoch
    assert [v[7] for v in batch_ends] == list(range(10))  # total_batch_idx
    assert [v[11] for v in batch_ends] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # _batches_that_stepped (before the count)
    epoch_ends = [values[4] for hook, values in seen if hook == "on_train_epoch_end"]
    assert epoch_ends == [(1, 1, 1, 0), (2, 2, 2, 1)]
    assert after[4] == (2, 2, 2, 2) and after[5] == (2, 2, 2, 2)
    assert after[6] == 4 and after[11] == 10


def test_the_view_is_read_only_and_names_the_flag():
    trainer = fl.Trainer(max_epochs=3, logger=False)
    assert trainer.fit_loop.max_epochs == 3
    trainer.max_epochs = 5
    assert trainer.fit_loop.max_epochs == 5
    with pytest.raises(AttributeError, match=r"trainer.max_epochs = 10"):
        trainer.fit_loop.max_epochs = 10
    with pytest.raises(AttributeError, match="read-only"):
        trainer.fit_loop.epoch_loop.max_steps = 3
    with pytest.raises(AttributeError):
        trainer.fit_loop.epoch_progress.current.completed = 1
