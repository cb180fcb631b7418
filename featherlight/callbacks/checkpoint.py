"""Marker base class for callbacks that write checkpoints."""
from __future__ import annotations

from featherlight.callbacks.callback import Callback


class Checkpoint(Callback):
    """Base class for checkpointing callbacks (:class:`ModelCheckpoint`, :class:`OnExceptionCheckpoint`).

    It adds no behaviour. ``isinstance(cb, Checkpoint)`` identifies checkpoint writers, and the class
    attribute ``monitors_metrics = True`` makes the trainer call their ``on_train_epoch_end`` *after* the
    LightningModule's, so they see the values the module logged at epoch end.
    """

    monitors_metrics = True
