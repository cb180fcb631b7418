"""The per-batch path skips what nobody asked for: each switch here is checked both ways."""
import pytest
import torch

import featherlight as L
import featherlight.trainer.step as step_module
from featherlight.trainer.step import Optimization
from featherlight.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from featherlight.demos.boring_classes import BoringModel


def _fit(model=None, callbacks=(), **kwargs):
    flags = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    flags.update(kwargs)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=list(callbacks), **flags)
    trainer.fit(model or BoringModel())
    return trainer


def _forbid(monkeypatch, obj, name):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"{name} was called")

    monkeypatch.setattr(obj, name, forbidden)


def test_outputs_are_not_built_for_callbacks_that_ignore_them(monkeypatch):
    _forbid(monkeypatch, step_module, "_batch_outputs")
    _fit(callbacks=[TQDMProgressBar(), ModelCheckpoint()], enable_progress_bar=True, enable_checkpointing=True)


def test_outputs_are_built_for_a_user_callback():
    seen = []

    class Reader(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs)

    _fit(callbacks=[Reader(), TQDMProgressBar()], enable_progress_bar=True)
    assert len(seen) == 3
    assert all(set(o) == {"loss"} and not o["loss"].requires_grad for o in seen)


def test_a_subclass_override_of_a_marked_hook_gets_outputs():
    seen = []

    class MyBar(TQDMProgressBar):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    _fit(callbacks=[MyBar()], enable_progress_bar=True)
    assert [set(o) for o in seen] == [{"loss"}] * 3


def test_unused_hooks_resolve_to_none():
    trainer = _fit()
    assert trainer.hooks.hook("on_train_batch_start") is None
    assert trainer.hooks.hook("on_before_backward") is None

    class Counter(Callback):
        calls = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            Counter.calls += 1

    trainer = _fit(callbacks=[Counter()])
    assert trainer.hooks.hook("on_train_batch_start") is not None
    assert Counter.calls == 3


def test_backward_is_direct_unless_something_hooks_into_it(monkeypatch):
    calls = []
    original = Optimization.backward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Optimization, "backward", counting)
    _fit()
    assert calls == []  # nothing customises backward: loss.backward() is called directly

    class Hooked(BoringModel):
        seen = 0

        def on_before_backward(self, loss):
            Hooked.seen += 1

    _fit(Hooked())
    assert len(calls) == 3 and Hooked.seen == 3


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_precision_contexts_still_apply(precision):
    dtypes = []

    class Recorder(BoringModel):
        def training_step(self, batch, batch_idx):
            out = self.layer(batch)
            dtypes.append(out.dtype)
            return out.float().sum()

    _fit(Recorder(), precision=precision)
    assert dtypes == [torch.float64 if precision == "64-true" else torch.bfloat16] * 3


def test_known_length_batches_stop_at_the_limit_without_fetching_more():
    fetched = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            fetched.append(i)
            return torch.randn(32)

    model = BoringModel()
    model.train_dataloader = lambda: torch.utils.data.DataLoader(Counting(), batch_size=1)
    trainer = _fit(model)
    assert fetched == [0, 1, 2] and trainer.global_step == 3


def test_outputs_of_a_returned_dict_hold_the_detached_loss_first():
    seen = []

    class Extra(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = self.layer(batch).sum()
            return {"acc": torch.tensor(1.0), "loss": loss}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(outputs)

    _fit(Extra(), accumulate_grad_batches=2)
    assert [list(o) for o in seen] == [["loss", "acc"]] * 3
    assert not any(o["loss"].requires_grad for o in seen)


def test_model_checkpoint_per_batch_hook_is_skipped_without_a_per_step_trigger(tmp_path):
    trainer = _fit(callbacks=[ModelCheckpoint(dirpath=tmp_path)], enable_checkpointing=True)
    assert trainer.hooks.hook("on_train_batch_end") is None
    trainer = _fit(callbacks=[ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1)],
                   enable_checkpointing=True)
    assert trainer.hooks.hook("on_train_batch_end") is not None
    assert len(list((tmp_path / "steps").iterdir())) == 3  # one checkpoint per step


def test_idle_hooks_stay_when_profiling(tmp_path):
    trainer = _fit(callbacks=[ModelCheckpoint(dirpath=tmp_path)], enable_checkpointing=True, profiler="simple")
    assert trainer.hooks.hook("on_train_batch_end") is not None
