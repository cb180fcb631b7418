"""A base class for callbacks that write predictions to disk as they are made."""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Optional

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule


class WriteInterval(str, Enum):
    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


class _IndexRecorder:
    """Wraps a ``BatchSampler``'s sampler and records the dataset indices it yields, in order.

    A plain ``BatchSampler`` groups consecutive sampler indices, so batch ``k`` holds the indices
    ``[k * batch_size, (k + 1) * batch_size)`` of the recorded sequence. The sampler runs in the main
    process even with worker processes, and batches arrive in order, so the record stays exact.
    """

    def __init__(self, sampler: Any, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.indices: list[int] = []

    def __iter__(self) -> Any:
        self.indices = []
        record = self.indices.append
        for idx in self.sampler:
            record(idx)
            yield idx

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:  # set_epoch, num_replicas... of the wrapped sampler
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def batch(self, batch_idx: int) -> list[int]:
        start = batch_idx * self.batch_size
        return self.indices[start:start + self.batch_size]


class BasePredictionWriter(Callback):
    """Base class for writing predictions: override :meth:`write_on_batch_end` and/or :meth:`write_on_epoch_end`.

    Args:
        write_interval: ``"batch"`` calls ``write_on_batch_end`` after every predict batch, ``"epoch"`` calls
            ``write_on_epoch_end`` once with all predictions, ``"batch_and_epoch"`` does both.

    ``batch_indices`` are the dataset indices of the samples of a batch (with a distributed sampler, the
    indices this process predicted). They are known for a ``DataLoader`` built with ``batch_size`` (a
    plain ``torch.utils.data.BatchSampler``); otherwise they are empty (an empty list per batch, no
    entries per dataloader at epoch end). For ``"epoch"`` writing,
    run ``trainer.predict(..., return_predictions=True)`` (the default) so the predictions are kept;
    with ``return_predictions=False`` the list of predictions is empty.

    Example::

        class TorchWriter(BasePredictionWriter):
            def __init__(self, output_dir):
                super().__init__(write_interval="epoch")
                self.output_dir = output_dir

            def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
                torch.save(predictions, os.path.join(self.output_dir, f"predictions_{trainer.global_rank}.pt"))
                torch.save(batch_indices, os.path.join(self.output_dir, f"batch_indices_{trainer.global_rank}.pt"))
    """

    def __init__(self, write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch") -> None:
        if write_interval not in [i.value for i in WriteInterval]:
            raise MisconfigurationException(f"`write_interval` should be one of {[i.value for i in WriteInterval]}.")
        self.interval = WriteInterval(write_interval)
        self._recorders: list[Optional[_IndexRecorder]] = []
        self._epoch_batch_indices: list[list[list[int]]] = []

    def write_on_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Override with the logic to write one batch of predictions."""
        raise NotImplementedError()

    def write_on_epoch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Override with the logic to write all predictions (a list of batch outputs; a list of such lists
        with several dataloaders). ``batch_indices`` has one list per dataloader, one entry per batch."""
        raise NotImplementedError()

    # ------------------------------------------------------------------ index tracking
    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else ([] if loaders is None else [loaders])
        self._recorders = [self._wrap(loader) for loader in loaders]
        self._epoch_batch_indices = [[] for _ in loaders]

    @staticmethod
    def _wrap(loader: Any) -> Optional[_IndexRecorder]:
        from torch.utils.data import BatchSampler, IterableDataset

        batch_sampler = getattr(loader, "batch_sampler", None)
        if type(batch_sampler) is not BatchSampler or isinstance(getattr(loader, "dataset", None), IterableDataset):
            return None  # an iterable dataset has no indices: its sampler only counts
        sampler = batch_sampler.sampler
        if isinstance(sampler, _IndexRecorder):
            return sampler
        recorder = _IndexRecorder(sampler, batch_sampler.batch_size)
        batch_sampler.sampler = recorder
        return recorder

    def _unwrap(self, trainer: "Trainer") -> None:
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else ([] if loaders is None else [loaders])
        for loader, recorder in zip(loaders, self._recorders):
            if recorder is not None and getattr(loader, "batch_sampler", None) is not None:
                loader.batch_sampler.sampler = recorder.sampler
        self._recorders = []

    # ------------------------------------------------------------------ writing
    def on_predict_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        recorder = self._recorders[dataloader_idx] if dataloader_idx < len(self._recorders) else None
        indices = recorder.batch(batch_idx) if recorder is not None else []
        if self.interval.on_epoch and recorder is not None:
            self._epoch_batch_indices[dataloader_idx].append(indices)
        if self.interval.on_batch:
            self.write_on_batch_end(trainer, pl_module, outputs, indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not self.interval.on_epoch:
            return
        predictions = trainer.predict_loop_predictions
        if len(predictions) == 1:
            predictions = predictions[0]
        self.write_on_epoch_end(trainer, pl_module, predictions, self._epoch_batch_indices)

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._unwrap(trainer)
        self._epoch_batch_indices = []

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        if self._recorders:
            self._unwrap(trainer)
