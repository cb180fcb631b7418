"""LightningDataModule: the data side of an experiment, shareable between models."""
from __future__ import annotations

import inspect
import os
from typing import IO, Any, Optional, Union

from torch.utils.data import DataLoader, Dataset, IterableDataset

from featherlight.core.hooks import CheckpointHooks, DataHooks
from featherlight.core.mixins.hparams_mixin import HyperparametersMixin


class LightningDataModule(DataHooks, HyperparametersMixin):
    """Download (``prepare_data``), split (``setup``) and serve data (``*_dataloader``).

    The Trainer calls ``prepare_data`` once per node, then ``setup(stage)`` on every process, then the
    dataloader hook of the running stage, and ``teardown(stage)`` at the end.
    """

    name: Optional[str] = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Optional["Trainer"] = None

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Optional[Union[Dataset, Any]] = None,
        val_dataset: Optional[Union[Dataset, Any]] = None,
        test_dataset: Optional[Union[Dataset, Any]] = None,
        predict_dataset: Optional[Union[Dataset, Any]] = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> "LightningDataModule":
        """A datamodule serving the given datasets (or lists/dicts of them) with plain DataLoaders.

        The training loader shuffles map-style datasets; the others don't. ``batch_size`` and ``num_workers`` are
        also passed to ``__init__`` when it takes them (or ``**kwargs``), as in Lightning; ``datamodule_kwargs``
        always are.
        """

        def loader(ds: Any, shuffle: bool = False) -> Any:
            if isinstance(ds, dict):
                return {k: loader(v, shuffle) for k, v in ds.items()}
            if isinstance(ds, (list, tuple)):
                return [loader(d, shuffle) for d in ds]
            shuffle &= not isinstance(ds, IterableDataset)
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              persistent_workers=num_workers > 0)

        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        special = {k: v for k, v in (("batch_size", batch_size), ("num_workers", num_workers))
                   if takes_any or (k in params and k != "self")}
        datamodule = cls(**datamodule_kwargs, **special)
        if train_dataset is not None:
            datamodule.train_dataloader = lambda: loader(train_dataset, shuffle=True)  # type: ignore[method-assign]
        if val_dataset is not None:
            datamodule.val_dataloader = lambda: loader(val_dataset)  # type: ignore[method-assign]
        if test_dataset is not None:
            datamodule.test_dataloader = lambda: loader(test_dataset)  # type: ignore[method-assign]
        if predict_dataset is not None:
            datamodule.predict_dataloader = lambda: loader(predict_dataset)  # type: ignore[method-assign]
        return datamodule

    def __str__(self) -> str:
        """The datasets each dataloader hook serves, one line per hook: ``{Train dataloader: size=64}``; ``None``
        where the hook is not available (not implemented or not set up); ``1. size=16 ; 2. size=NA`` for several."""
        def size(loader: Any) -> str:
            dataset = getattr(loader, "dataset", None)
            try:
                return str(len(dataset))  # type: ignore[arg-type]
            except TypeError:  # an iterable dataset
                return "NA"

        lines = []
        for label, hook in (("Train dataloader", "train_dataloader"), ("Validation dataloader", "val_dataloader"),
                            ("Test dataloader", "test_dataloader"), ("Predict dataloader", "predict_dataloader")):
            try:
                loaders = getattr(self, hook)()
            except Exception:  # not implemented, or its data not set up yet
                lines.append(f"{{{label}: None}}")
                continue
            if isinstance(loaders, DataLoader):
                text = f"size={size(loaders)}"
            else:
                items = list(loaders.values()) if isinstance(loaders, dict) else list(loaders)
                text = " ; ".join(f"{i}. size={size(dl)}" for i, dl in enumerate(items, start=1))
            lines.append(f"{{{label}: {text}}}")
        return os.linesep.join(lines)

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (``checkpoint[qualname]``)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state from :meth:`state_dict`."""

    def on_exception(self, exception: BaseException) -> None:
        """Called when the trainer's run is interrupted by an exception."""

    # checkpoint hooks, as Lightning's datamodule has them
    on_save_checkpoint = CheckpointHooks.on_save_checkpoint
    on_load_checkpoint = CheckpointHooks.on_load_checkpoint

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Union[str, os.PathLike, IO[bytes]],
        map_location: Any = None,
        hparams_file: Optional[Union[str, os.PathLike]] = None,
        weights_only: Optional[bool] = None,
        **kwargs: Any,
    ) -> "LightningDataModule":
        """Build the datamodule from the ``datamodule_hyper_parameters`` saved in a checkpoint."""
        from featherlight.core.saving import load_datamodule_from_checkpoint

        return load_datamodule_from_checkpoint(cls, checkpoint_path, map_location, hparams_file,
                                                weights_only is not False, **kwargs)
