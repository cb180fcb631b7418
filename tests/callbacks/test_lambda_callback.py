import inspect
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import Callback, LambdaCallback
from featherlight.callbacks.lambda_function import _HOOKS
from featherlight.callbacks import Callback as _Base
from featherlight.utilities.model_helpers import has_effect


def _callback_overrides(cb, name):
    return has_effect(name, cb, _Base)


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def test_step(self, batch, batch_idx):
        pass

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=4):
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=1)


def test_every_callback_hook_is_accepted_and_called():
    calls = Counter()
    hooks = {name: (lambda name: lambda *args: calls.update([name]))(name) for name in _HOOKS}
    callback = LambdaCallback(**hooks)
    for name in _HOOKS:
        assert _callback_overrides(callback, name), name

    trainer = L.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    model = TinyModule()
    trainer.fit(model, loader(4), loader(2))
    trainer.validate(model, loader(2), verbose=False)
    trainer.test(model, loader(3), verbose=False)
    trainer.predict(model, loader(5))
    assert calls["on_train_batch_end"] == 8
    assert calls["on_train_epoch_start"] == 2
    assert calls["on_validation_batch_end"] == 2 * 2 + 2 + 2  # sanity check, two epochs, validate()
    assert calls["on_test_batch_start"] == 3
    assert calls["on_predict_batch_end"] == 5
    assert calls["setup"] == calls["teardown"] == 4
    assert calls["on_fit_start"] == calls["on_fit_end"] == 1
    assert calls["on_before_backward"] == calls["on_after_backward"] == calls["on_before_optimizer_step"] == 8
    assert calls["on_exception"] == calls["on_save_checkpoint"] == calls["on_load_checkpoint"] == 0


def test_functions_receive_the_hook_arguments():
    seen = []
    callback = LambdaCallback(
        on_train_batch_end=lambda trainer, pl_module, outputs, batch, batch_idx: seen.append(
            (type(trainer).__name__, type(pl_module).__name__, sorted(outputs), batch_idx)),
        on_train_epoch_end=lambda trainer, pl_module: seen.append(("epoch_end", trainer.current_epoch)),
    )
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), loader(2))
    assert seen == [("Trainer", "TinyModule", ["loss"], 0), ("Trainer", "TinyModule", ["loss"], 1),
                    ("epoch_end", 0)]


def test_only_given_hooks_are_overridden():
    callback = LambdaCallback(on_fit_start=lambda *a: None, on_fit_end=None)
    assert _callback_overrides(callback, "on_fit_start")
    assert not _callback_overrides(callback, "on_fit_end")
    assert not _callback_overrides(callback, "on_train_batch_end")


def test_unknown_hook_raises():
    with pytest.raises(TypeError, match="unknown hook name.*on_trian_start"):
        LambdaCallback(on_trian_start=lambda *a: None)
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(state_dict=lambda: {})
    with pytest.raises(TypeError, match="callable"):
        LambdaCallback(on_fit_start=3)


def test_hooks_match_lightning():
    pl = pytest.importorskip("lightning.pytorch")
    theirs = set(inspect.signature(pl.callbacks.LambdaCallback.__init__).parameters) - {"self"}
    assert theirs <= set(_HOOKS)
    # everything public on the base is a hook, except the state and what a callback declares to the trainer
    declarations = {"monitors_metrics", "runs_first", "edits_weights_only_checkpoints"}
    # (and `log`/`log_dict`, which a callback calls rather than overrides)
    ours_in_base = {n for n in vars(Callback) if not n.startswith("_")} - {"state_key", "state_dict",
                                                                           "load_state_dict", "log",
                                                                           "log_dict"} - declarations
    assert set(_HOOKS) == ours_in_base
