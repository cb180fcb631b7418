"""The hook catalogue: every hook a LightningModule, DataModule or Callback can override.

Where each hook fires, as the loop runs it (``trainer/fit_loop.py`` and ``trainer/eval_loop.py``
are the real thing; this is the map)::

    fit(model, datamodule)
      configure_callbacks, prepare_data                  # once, rank 0 of each node
      setup("fit")                                       # callbacks, datamodule, module
      configure_model, configure_optimizers
      on_fit_start
      zero_grad
      [sanity check: on_sanity_check_start, validation loop (see below), on_sanity_check_end]
      train_dataloader
      on_train_start
      for epoch:
        on_train_epoch_start
        for batch in train_dataloader:
          on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer
          on_train_batch_start                           # returning -1 ends the epoch
          optimizer_step(epoch, batch_idx, optimizer, closure):       # the user's override, or ours
            closure():
              training_step
              on_before_zero_grad, optimizer_zero_grad  # first batch of an accumulation window
              on_before_backward, backward, on_after_backward
            on_before_optimizer_step
            configure_gradient_clipping -> clip_gradients
          lr_scheduler_step                              # interval "step" (and "epoch" on the last batch)
          on_train_batch_end
          [validation loop when due]
        on_train_epoch_end                               # callbacks, module, then monitoring callbacks
      on_train_end, on_fit_end
      teardown("fit")

    validation loop (test and predict are alike):
      zero_grad (module), on_validation_model_zero_grad, on_validation_model_eval
      on_validation_start, on_validation_epoch_start
      for dataloader_idx, batch:
        batch transfer hooks, on_validation_batch_start, validation_step, on_validation_batch_end
      on_validation_epoch_end, on_validation_end, on_validation_model_train

The classes below give every hook a do-nothing default, so the dispatcher can tell which objects
override a hook (and skip the rest at no per-batch cost).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

# Hooks shared by callbacks and the LightningModule, called callbacks first. The dispatcher
# precomputes, per hook, which objects override it.
SHARED_HOOKS = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_exception",
    "on_save_checkpoint",
    "on_load_checkpoint",
)


class ModelHooks:
    """Hooks of the LightningModule that describe the loop. Every default does nothing."""

    def on_fit_start(self) -> None:
        """Called at the very beginning of fit."""

    def on_fit_end(self) -> None:
        """Called at the very end of fit."""

    def on_train_start(self) -> None:
        """Called at the beginning of training after the sanity check."""

    def on_train_end(self) -> None:
        """Called at the end of training before the logger experiment is closed."""

    def on_validation_start(self) -> None:
        """Called at the beginning of validation."""

    def on_validation_end(self) -> None:
        """Called at the end of validation."""

    def on_test_start(self) -> None:
        """Called at the beginning of testing."""

    def on_test_end(self) -> None:
        """Called at the end of testing."""

    def on_predict_start(self) -> None:
        """Called at the beginning of predicting."""

    def on_predict_end(self) -> None:
        """Called at the end of predicting."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Optional[int]:
        """Called before the training batch. Returning ``-1`` skips the rest of the epoch."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Called after the training batch; ``outputs`` is what ``training_step`` returned (a dict)."""

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before the validation batch."""

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after the validation batch."""

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before the test batch."""

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after the test batch."""

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before the predict batch."""

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after the predict batch."""

    def on_validation_model_zero_grad(self) -> None:
        """Called when validation starts inside fit: drops gradients so evaluation does not hold them."""
        self.zero_grad(set_to_none=True)  # type: ignore[attr-defined]

    def on_validation_model_eval(self) -> None:
        """Puts the module in eval mode for validation."""
        self.trainer.lightning_module.eval()  # type: ignore[attr-defined]

    def on_validation_model_train(self) -> None:
        """Puts the module back in train mode after validation."""
        self.trainer.lightning_module.train()  # type: ignore[attr-defined]

    def on_test_model_eval(self) -> None:
        """Puts the module in eval mode for testing."""
        self.trainer.lightning_module.eval()  # type: ignore[attr-defined]

    def on_test_model_train(self) -> None:
        """Puts the module back in train mode after testing."""
        self.trainer.lightning_module.train()  # type: ignore[attr-defined]

    def on_predict_model_eval(self) -> None:
        """Puts the module in eval mode for predicting."""
        self.trainer.lightning_module.eval()  # type: ignore[attr-defined]

    def on_train_epoch_start(self) -> None:
        """Called at the start of a training epoch."""

    def on_train_epoch_end(self) -> None:
        """Called at the end of a training epoch."""

    def on_validation_epoch_start(self) -> None:
        """Called at the start of a validation epoch."""

    def on_validation_epoch_end(self) -> None:
        """Called at the end of a validation epoch."""

    def on_test_epoch_start(self) -> None:
        """Called at the start of a test epoch."""

    def on_test_epoch_end(self) -> None:
        """Called at the end of a test epoch."""

    def on_predict_epoch_start(self) -> None:
        """Called at the start of predicting."""

    def on_predict_epoch_end(self) -> None:
        """Called at the end of predicting."""

    def on_before_zero_grad(self, optimizer: Optimizer) -> None:
        """Called before ``optimizer.zero_grad()``."""

    def on_before_backward(self, loss: Tensor) -> None:
        """Called before ``loss.backward()``."""

    def on_after_backward(self) -> None:
        """Called after ``loss.backward()`` and before optimizers step; gradients may still be scaled."""

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Called before ``optimizer.step()``, after unscaling and before clipping."""

    def configure_sharded_model(self) -> None:
        """Deprecated alias of :meth:`configure_model`."""

    def configure_model(self) -> None:
        """Create modules in a strategy-aware way (sharded/meta-device init). Called in fit/validate/test/predict."""


class DataHooks:
    """Data hooks shared by the LightningModule and the LightningDataModule."""

    def __init__(self) -> None:
        super().__init__()
        # Lightning's flag: whether prepare_data runs on every node's local rank 0 or only global rank 0.
        self.prepare_data_per_node: bool = True
        self.allow_zero_length_dataloader_with_multiple_devices: bool = False

    def prepare_data(self) -> None:
        """Download or write data once; runs on one process per node. Do not set state here."""

    def setup(self, stage: str) -> None:
        """Called at the beginning of fit/validate/test/predict on every process. ``stage`` names it."""

    def teardown(self, stage: str) -> None:
        """Called at the end of fit/validate/test/predict."""

    def train_dataloader(self) -> Any:
        """Return the training dataloader(s)."""
        raise NotImplementedError("`train_dataloader` must be implemented to be used with the Trainer")

    def val_dataloader(self) -> Any:
        """Return the validation dataloader(s)."""
        raise NotImplementedError("`val_dataloader` must be implemented to be used with the Trainer")

    def test_dataloader(self) -> Any:
        """Return the test dataloader(s)."""
        raise NotImplementedError("`test_dataloader` must be implemented to be used with the Trainer")

    def predict_dataloader(self) -> Any:
        """Return the predict dataloader(s)."""
        raise NotImplementedError("`predict_dataloader` must be implemented to be used with the Trainer")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``; tensors in lists, tuples, dicts, dataclasses and objects with ``.to``."""
        from featherlight.utilities.apply_func import move_data_to_device

        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter or apply augmentations to ``batch`` before it is moved to the device."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter or apply augmentations to ``batch`` after it is moved to the device."""
        return batch


class CheckpointHooks:
    """Hooks to add to, or read from, the checkpoint dict."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Called when loading a checkpoint; restore what :meth:`on_save_checkpoint` stored."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Called when saving a checkpoint; add anything else you want to save to ``checkpoint``."""
