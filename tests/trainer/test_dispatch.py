"""What callbacks declare to the hook dispatcher, and what a stand-in (a mock) declares: nothing."""
from unittest import mock

import featherlight as L
from featherlight.callbacks import Callback
from featherlight.demos.boring_classes import BoringModel


def _fit(callbacks):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(BoringModel())
    return trainer


def test_a_mock_callback_is_called_and_declares_nothing():
    cb = mock.Mock(spec=Callback)
    trainer = _fit([cb])
    assert cb.on_train_batch_end.call_count == 2
    assert cb.on_train_epoch_end.call_count == 1
    # a Mock attribute is not `True`: the mock is not taken for a metric monitor or a first-runner
    assert trainer.hooks.late_callbacks["on_train_epoch_end"] == ()


def test_a_mock_callback_records_only_the_hooks_the_trainer_calls():
    """Lightning's tests compare a mock's recorded calls with another's: asking the mock for its declarations
    (``idle_hooks``, ``reads_outputs``) would record calls Lightning never makes."""
    cb = mock.Mock(spec=Callback)
    _fit([cb])
    names = [name for name, _, _ in cb.method_calls]
    assert "idle_hooks" not in names and "reads_outputs" not in names
    assert names[:3] == ["setup", "on_fit_start", "on_train_start"]


def test_a_declaration_is_asked_when_the_class_makes_it():
    asked = []

    class Declares(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pass

        def reads_outputs(self, hook):
            asked.append(hook)
            return False

    _fit([Declares()])
    assert "on_train_batch_end" in asked


def test_a_declaration_set_on_the_instance_is_asked():
    asked = []
    cb = L.callbacks.LambdaCallback(on_train_batch_end=lambda *args: None,
                                    idle_hooks=lambda trainer: asked.append("idle_hooks") or set(),
                                    reads_outputs=lambda hook: asked.append(hook) or False)
    _fit([cb])
    assert "idle_hooks" in asked and "on_train_batch_end" in asked


def test_declarations_order_and_skip_hooks():
    order = []

    class Monitor(Callback):
        monitors_metrics = True

        def on_train_epoch_end(self, trainer, pl_module):
            order.append("monitor")

    class Plain(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            order.append("plain")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            raise AssertionError("declared idle: never called")

        def idle_hooks(self, trainer):
            return {"on_train_batch_start"}

    class Model(BoringModel):
        def on_train_epoch_end(self):
            order.append("module")

    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[Monitor(), Plain()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Model())
    assert order == ["plain", "module", "monitor"]
