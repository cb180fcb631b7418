"""The Callback base class: `Callback.log`/`log_dict` log through the running module."""
import pytest

import featherlight as L
from featherlight.callbacks import Callback
from featherlight.demos.boring_classes import BoringModel
from featherlight.utilities.exceptions import MisconfigurationException


def lean(**kwargs):
    base = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    base.update(kwargs)
    return L.Trainer(**base)


class LoggingCallback(Callback):
    def on_train_start(self, trainer, pl_module):
        self.log("on_train_start", 1.0)

    def on_train_epoch_start(self, trainer, pl_module):
        self.log_dict({"on_train_epoch_start": 2.0})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.log("on_train_batch_end", 3.0, prog_bar=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        self.log("on_validation_epoch_end", 4.0)

    def on_train_epoch_end(self, trainer, pl_module):
        self.log("on_train_epoch_end", 5.0)


def test_callback_log_uses_the_hook_it_is_called_from():
    trainer = lean(limit_train_batches=1, limit_val_batches=1, callbacks=[LoggingCallback()])
    trainer.fit(BoringModel())
    assert {k: v.item() for k, v in trainer.callback_metrics.items()} == {
        "on_train_start": 1.0, "on_train_epoch_start": 2.0, "on_train_batch_end": 3.0,
        "on_validation_epoch_end": 4.0, "on_train_epoch_end": 5.0,
    }
    assert trainer.progress_bar_metrics == {"on_train_batch_end": 3.0}


def test_callback_log_follows_the_callback_into_its_next_trainer():
    callback = LoggingCallback()
    first = lean(limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    first.fit(BoringModel())
    second = lean(limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    second.fit(BoringModel())
    assert second.callback_metrics["on_train_start"] == 1.0


def test_callback_log_outside_a_run_says_where_to_call_it():
    with pytest.raises(MisconfigurationException, match="call it from one of the callback's hooks"):
        LoggingCallback().log("x", 1.0)


def test_callback_log_in_a_hook_that_cannot_log_names_the_hook():
    class Early(Callback):
        def on_fit_start(self, trainer, pl_module):
            self.log("x", 1.0)

    with pytest.raises(MisconfigurationException, match=r"You can't `self.log\(\)` inside `on_fit_start`"):
        lean(limit_train_batches=1, limit_val_batches=0, callbacks=[Early()]).fit(BoringModel())
