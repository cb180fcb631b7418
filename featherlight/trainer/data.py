"""Dataloaders (``trainer.data``): where they come from, when they are (re)loaded, how many batches each run
takes, worker seeding, and how a batch reaches the device."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterator, Optional, Union

from torch.utils.data import DataLoader, IterableDataset

from featherlight.core.hooks import DataHooks
from featherlight.core.module import LightningModule
from featherlight.precision.precision import Precision
from featherlight.strategies.samplers import _ResumableRandomSampler, _ResumableSequentialSampler
from featherlight.utilities.apply_func import move_data_to_device
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import has_effect, is_overridden
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn
from featherlight.utilities.warnings import PossibleUserWarning

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}


def _overrides(obj: Any, hook: str) -> bool:
    return obj is not None and is_overridden(hook, obj, DataHooks)


def _request_dataloader(trainer: "Trainer", prefix: str) -> Any:
    """The loader(s) for ``prefix``: passed to the entry point, else the datamodule's, else the module's."""
    given = trainer.data.given.get(prefix)
    if given is not None:
        return given
    hook = _HOOK[prefix]
    source = trainer.datamodule if _overrides(trainer.datamodule, hook) else None
    if source is None and _overrides(trainer.lightning_module, hook):
        source = trainer.lightning_module
    if source is None:
        return None
    hooks = trainer.hooks
    prev, hooks.current = hooks.current, hook
    try:
        with hooks.profile(f"[{type(source).__name__}].{hook}"):
            return getattr(source, hook)()
    finally:
        hooks.current = prev


def _as_list(loaders: Any) -> list:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def _has_len(loader: Any) -> bool:
    try:
        return len(loader) is not None
    except (TypeError, NotImplementedError):
        return False


def _num_batches(loader: Any, limit: Union[int, float], flag: str) -> Union[int, float]:
    """How many batches of ``loader`` a run takes under ``limit_*_batches=limit`` (``flag``)."""
    n: Union[int, float] = len(loader) if _has_len(loader) else float("inf")
    if n == 0:
        return 0
    if isinstance(limit, int):
        return min(n, limit)
    prefix = flag[len("limit_"):-len("_batches")] if flag.startswith("limit_") else flag
    if n == float("inf"):
        if limit == 1.0:
            return n
        raise MisconfigurationException(
            f"When using an `IterableDataset`, `Trainer({flag})` must be `1.0` or an int. An int specifies "
            f"`num_{prefix}_batches` to use. The dataloader has no length, so a fraction of it is unknown: pass e.g. "
            f"`{flag}=100`."
        )
    out = int(n * limit)
    if limit > 0 and out == 0:
        min_fraction = 1.0 / n
        raise MisconfigurationException(
            f"You requested to check {limit} of the `{prefix}_dataloader` but {limit} * {n} < 1. Please increase the "
            f"`{flag}` argument. Try at least `{flag}={min_fraction}` (or an int number of batches, e.g. `{flag}=1`)."
        )
    return out


_ONE_BATCH = {"limit_train_batches": "1 batch per epoch will be used.",
              "val_check_interval": "validation will run after every batch."}
_ALL_BATCHES = {"limit_train_batches": "100% of the batches per epoch will be used.",
                "val_check_interval": "validation will run at the end of the training epoch."}


def check_limit(value: Any, flag: str) -> Union[int, float]:
    """A ``limit_*_batches``/``overfit_batches``/``val_check_interval`` flag: a fraction in [0, 1] or a number of
    batches (None means all, 1.0). An explicit ``1`` or ``1.0`` is announced (INFO), as Lightning does, since the
    two mean different things."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationException(
            f"You have passed invalid value {value} for {flag}, it has to be in [0.0, 1.0] or an int. Pass a fraction "
            "of the batches (float) or a number of batches (int)."
        )
    if isinstance(value, int) and value == 1:
        rank_zero_info(f"`Trainer({flag}=1)` was configured so {_ONE_BATCH.get(flag, '1 batch will be used.')}")
    elif isinstance(value, float) and value == 1.0:
        rank_zero_info(f"`Trainer({flag}=1.0)` was configured so "
                       f"{_ALL_BATCHES.get(flag, '100% of the batches will be used.')}.")
    if 0 <= value <= 1:
        return value
    if value > 1 and value % 1.0 == 0:
        return int(value)
    raise MisconfigurationException(
        f"You have passed invalid value {value} for {flag}, it has to be in [0.0, 1.0] or an int. Pass a fraction of "
        f"the batches in [0.0, 1.0] or a whole number of batches, e.g. `{flag}=10`."
    )


def _prepare_loader(trainer: "Trainer", loader: Any, prefix: str) -> Any:
    """Per-process adjustments: seeded workers, the distributed sampler, the overfit sampler."""
    if not isinstance(loader, DataLoader):
        return loader
    if loader.num_workers > 0 and loader.worker_init_fn is None:
        import os

        if os.environ.get("PL_SEED_WORKERS") == "1":
            from featherlight.utilities.seed import pl_worker_init_function

            # worker_init_fn may be set after construction (DataLoader only freezes sampler/batch attributes)
            loader.worker_init_fn = partial(pl_worker_init_function, rank=trainer.global_rank)
    if trainer.overfit_batches > 0 and prefix in ("train", "val") and trainer.state.fn == "fit":
        loader = _overfit_order(loader, prefix)
    loader = trainer.strategy.process_dataloader(loader, prefix, trainer)
    if prefix == "train":
        loader = _make_resumable(loader)
    return loader


def _overfit_order(loader: DataLoader, prefix: str) -> DataLoader:
    """``overfit_batches`` trains (and validates) on the same first batches every epoch: a loader that does not read
    its dataset in order gets a ``SequentialSampler``, with Lightning's warning."""
    from torch.utils.data import SequentialSampler

    if isinstance(getattr(loader, "sampler", None), SequentialSampler) or isinstance(loader.dataset, IterableDataset):
        return loader
    if not _is_plain(loader):
        rank_zero_warn(
            f"You requested to overfit but the {prefix} dataloader has a custom batch sampler or is a DataLoader "
            "subclass, so featherlight cannot make it read its dataset in order: the overfit batches may differ "
            "between epochs. Give it `shuffle=False` (or a `SequentialSampler`)."
        )
        return loader
    rank_zero_warn(
        f"You requested to overfit but enabled {prefix} dataloader shuffling. We are turning off the {prefix} "
        "dataloader shuffling for you."
    )
    return _replace_sampler(loader, shuffle=False)


_LOADER_ARGS = ("batch_size", "drop_last", "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                "multiprocessing_context", "generator", "persistent_workers", "pin_memory_device", "in_order")


def _rebuild_loader(loader: DataLoader, sampler: Any) -> DataLoader:
    """A plain DataLoader like ``loader`` (same batching, workers, collate...) drawing from ``sampler``."""
    import inspect

    accepted = inspect.signature(DataLoader.__init__).parameters
    kwargs = {k: getattr(loader, k) for k in _LOADER_ARGS if k in accepted and hasattr(loader, k)}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, sampler=sampler, **kwargs)


def _replace_sampler(loader: DataLoader, shuffle: bool = False, sampler: Any = None) -> DataLoader:
    """A new DataLoader like ``loader`` but with ``sampler`` (or a sequential/random one)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if not _is_plain(loader):
        raise MisconfigurationException(
            "This DataLoader has a custom sampler, batch_sampler or class, so featherlight cannot replace its "
            "sampler. Build the sampler you need yourself (and set `use_distributed_sampler=False`)."
        )
    if sampler is None:
        sampler = RandomSampler(loader.dataset) if shuffle else SequentialSampler(loader.dataset)
    return _rebuild_loader(loader, sampler)


def _is_plain(loader: Any) -> bool:
    """A torch DataLoader (not a subclass) over a map-style dataset with the default batch sampler."""
    from torch.utils.data import BatchSampler

    return (type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset)
            and type(getattr(loader, "batch_sampler", None)) is BatchSampler)


def _make_resumable(loader: Any) -> Any:
    """Swap a plain loader's Random/SequentialSampler for a :class:`_ResumableSampler` (same order)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if not _is_plain(loader):
        return loader
    sampler = loader.sampler
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        return _rebuild_loader(loader, _ResumableRandomSampler(sampler.data_source, sampler.generator))
    if type(sampler) is SequentialSampler:
        return _rebuild_loader(loader, _ResumableSequentialSampler(sampler.data_source))
    return loader


class _MaxSizeCycle:
    """Several training loaders at once: each batch holds one batch of every loader (a dict or list);
    shorter loaders restart until the longest is exhausted (Lightning's ``max_size_cycle``)."""

    def __init__(self, loaders: Any) -> None:
        self.loaders = loaders
        self._keys = list(loaders.keys()) if isinstance(loaders, dict) else None
        self.flattened = list(loaders.values()) if isinstance(loaders, dict) else list(loaders)

    def __len__(self) -> int:
        return max(len(d) for d in self.flattened)

    def __iter__(self) -> Iterator:
        iters = [iter(d) for d in self.flattened]
        for _ in range(len(self)):
            batch = []
            for i, it in enumerate(iters):
                try:
                    batch.append(next(it))
                except StopIteration:
                    iters[i] = iter(self.flattened[i])
                    batch.append(next(iters[i]))
            yield dict(zip(self._keys, batch)) if self._keys is not None else batch


def _combine_train(loaders: Any) -> Any:
    """What the loop iterates: one loader as it is; a list/tuple/dict (even of one) as batches of that shape,
    as Lightning's ``max_size_cycle`` gives them (``[loader]`` yields ``[batch]``)."""
    if isinstance(loaders, (dict, list, tuple)):
        return _MaxSizeCycle(loaders)
    return loaders


def _is_iterable_dataset(loader: Any) -> bool:
    return isinstance(getattr(loader, "dataset", None), IterableDataset)


def _sanity_or_limit(n: Union[int, float], limit: Optional[int]) -> Union[int, float]:
    if limit is None or limit < 0:
        return n
    return min(n, limit) if not math.isinf(n) else limit


class DataConnector:
    """The run's dataloaders (``trainer.data``).

    ``given`` holds the loaders passed to the entry point; the others come from the datamodule's or the
    module's ``*_dataloader`` hooks. The trainer's public ``train_dataloader``/``val_dataloaders``/...,
    ``num_training_batches`` and ``num_*_batches`` are set here. ``transfer(batch, idx)`` is the batch's way to
    the device (the transfer hooks, the move, the precision's conversion), resolved once per run.
    """

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.given: dict[str, Any] = {}
        self.train_loaded_epoch: Optional[int] = None
        self.val_loaded_epoch: Optional[int] = None
        self.train_len: Union[int, float] = float("inf")  # the training loader's own length (before limits)
        self.train_iterable: Any = None  # what the fit loop iterates (several loaders combined)
        self.val_loaders: Optional[list] = None
        self.val_limits: list = []
        self._val_on: Optional[bool] = None  # decided once per run
        self.batch_hooks: tuple = (None, None, None)
        self.moves_batches = True
        self.convert_input: Any = None

    def start_run(self) -> None:
        """A run starts: validation loaders and the validation switch are decided anew."""
        self.val_loaders = None
        self._val_on = None

    # ---------------------------------------------------------------- training
    def load_train(self) -> None:
        """(Re)load the training loader when there is none yet or a reload is due."""
        trainer = self.trainer
        if trainer.train_dataloader is not None and self.train_loaded_epoch is not None \
                and not self.should_reload_train():
            return
        loaders = _request_dataloader(trainer, "train")
        if loaders is None:
            raise MisconfigurationException(
                "No training dataloader: pass `trainer.fit(model, train_dataloaders=...)`, a datamodule with "
                "`train_dataloader()`, or define `train_dataloader()` in your LightningModule."
            )
        if isinstance(loaders, (list, tuple, dict)):
            loaders = type(loaders)(
                {k: _prepare_loader(trainer, v, "train") for k, v in loaders.items()}
                if isinstance(loaders, dict) else [_prepare_loader(trainer, v, "train") for v in loaders])
        else:
            loaders = _prepare_loader(trainer, loaders, "train")
        # the public one keeps the shape returned (a loader, or a list/dict of them), as in Lightning
        trainer.train_dataloader = loaders
        self.train_iterable = combined = _combine_train(loaders)
        self.train_loaded_epoch = trainer.progress.epoch
        self.train_len = len(combined) if _has_len(combined) else float("inf")
        trainer.num_training_batches = _num_batches(combined, trainer.limit_train_batches, "limit_train_batches")
        n = trainer.num_training_batches
        if trainer.loggers and n < trainer.log_every_n_steps and not trainer.fast_dev_run:
            rank_zero_warn(
                f"The number of training batches ({n}) is smaller than the logging interval "
                f"Trainer(log_every_n_steps={trainer.log_every_n_steps}). Set a lower value for log_every_n_steps if "
                "you want to see logs for the training epoch.",
                category=PossibleUserWarning,
            )
        if self.train_len == 0 and trainer.limit_train_batches != 0:
            raise MisconfigurationException(
                "The training dataloader is empty (0 batches). Check the dataset's length, `batch_size` and "
                "`drop_last`, or pass `limit_train_batches=0` to skip training on purpose."
            )
        if isinstance(trainer.val_check_interval, int):
            trainer.val_check_batch = trainer.val_check_interval
            if trainer.val_check_batch > trainer.num_training_batches and trainer.check_val_every_n_epoch is not None:
                raise ValueError(
                    f"`val_check_interval` ({trainer.val_check_interval}) must be less than or equal to the number "
                    f"of the training batches ({trainer.num_training_batches}). If you want to disable validation "
                    "set `limit_val_batches` to 0.0 instead. If you want to validate based on the total training "
                    "batches, set `check_val_every_n_epoch=None`."
                )
        elif math.isinf(trainer.num_training_batches):
            trainer.val_check_batch = float("inf")
            if trainer.val_check_interval != 1.0:
                raise MisconfigurationException(
                    "When using an IterableDataset for the training dataloader, `Trainer(val_check_interval)` must "
                    "be `1.0` or an int. An int k specifies checking validation every k training batches."
                )
        else:
            trainer.val_check_batch = max(1, int(trainer.num_training_batches * trainer.val_check_interval))

    def should_reload_train(self) -> bool:
        n = self.trainer.reload_dataloaders_every_n_epochs
        return bool(n) and self.train_loaded_epoch is not None and \
            self.trainer.progress.epoch - self.train_loaded_epoch >= n

    # ---------------------------------------------------------------- evaluation
    def load_eval(self, prefix: str) -> tuple[list, list]:
        """The ``prefix`` ("val", "test", "predict") loaders and how many batches of each this run takes."""
        trainer = self.trainer
        raw = _request_dataloader(trainer, prefix)
        loaders = [_prepare_loader(trainer, dl, prefix) for dl in _as_list(raw)]
        flag = f"limit_{prefix}_batches"
        limits = [_num_batches(dl, getattr(trainer, flag), flag) for dl in loaders]
        for i, dl in enumerate(loaders):
            if _has_len(dl) and len(dl) == 0 and getattr(trainer, flag) != 0:
                # an empty loader would skip this evaluation without a word; the training one raises instead
                which = f"{prefix}_dataloader" + (f" {i}" if len(loaders) > 1 else "")
                trainer.warnings.warn(
                    f"Total length of `{type(dl).__name__}` across ranks is zero. Please make sure this was your "
                    f"intention. (The {which} has 0 batches, so it is skipped: check the dataset's length, "
                    f"`batch_size` and `drop_last`, or set `{flag}=0` to turn it off on purpose.)"
                )
        public = loaders[0] if len(loaders) == 1 else loaders
        if prefix == "val":
            trainer.val_dataloaders, trainer.num_val_batches = public, limits
        elif prefix == "test":
            trainer.test_dataloaders, trainer.num_test_batches = public, limits
        else:
            trainer.predict_dataloaders, trainer.num_predict_batches = public, limits
        return loaders, limits

    def has_source(self, prefix: str) -> bool:
        """Whether ``prefix``'s loaders come from somewhere: passed to the entry point, or a hook the datamodule or
        the module overrides."""
        trainer, hook = self.trainer, _HOOK[prefix]
        return self.given.get(prefix) is not None or _overrides(trainer.datamodule, hook) or \
            _overrides(trainer.lightning_module, hook)

    def val_enabled(self) -> bool:
        """Validation runs if the module has a ``validation_step`` and ``limit_val_batches`` allows it
        (decided once per run: this is asked after every training batch)."""
        if self._val_on is None:
            trainer = self.trainer
            self._val_on = trainer.limit_val_batches != 0 and \
                is_overridden("validation_step", trainer.lightning_module, LightningModule)
        return self._val_on

    def ensure_val_loaders(self, counts_as_reload: bool = True) -> bool:
        """Load the validation loaders if not loaded yet; whether there is anything to validate on.

        ``counts_as_reload=False`` (the sanity check before an epoch that does not validate) loads them without
        starting the ``reload_dataloaders_every_n_epochs`` count: the first real validation reloads them, as in
        Lightning."""
        if self.val_loaders is None:
            self.val_loaders, self.val_limits = self.load_eval("val")
            self.val_loaded_epoch = self.trainer.progress.epoch if counts_as_reload else None
        return bool(self.val_loaders) and sum(self.val_limits) > 0

    def val_reload_due(self) -> bool:
        """``reload_dataloaders_every_n_epochs``: loaders loaded ``n`` or more epochs ago (or only for the sanity
        check) are reloaded before a validation."""
        n = self.trainer.reload_dataloaders_every_n_epochs
        if not n or self.val_loaders is None:
            return False
        return self.val_loaded_epoch is None or self.trainer.progress.epoch - self.val_loaded_epoch >= n

    def reload_val(self) -> tuple[list, list]:
        self.val_loaders = None
        self.ensure_val_loaders()
        return self.val_loaders, self.val_limits  # type: ignore[return-value]

    # ---------------------------------------------------------------- the way to the device
    def resolve_transfer(self) -> None:
        """Decide once per run what a batch goes through (on the CPU in full precision with no transfer hooks, a
        batch is used as it comes and the loop skips the call)."""
        trainer = self.trainer
        precision = trainer.precision_plugin
        self.convert_input = precision.convert_input if has_effect("convert_input", precision, Precision) else None
        hooks = []
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            dm = trainer.datamodule
            own = dm is not None and _overrides(dm, name)
            hooks.append(getattr(dm, name) if own else trainer.hooks.module_hook(name))
        self.batch_hooks = tuple(hooks)
        self.moves_batches = any(h is not None for h in hooks) or trainer.strategy.root_device.type != "cpu" \
            or self.convert_input is not None

    def transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batch transfer hooks (the datamodule's if it overrides them, else the module's) and the move."""
        before, transfer, after = self.batch_hooks
        if before is not None:
            batch = before(batch, dataloader_idx)
        device = self.trainer.strategy.root_device
        if transfer is not None:
            batch = transfer(batch, device, dataloader_idx)
        elif device.type != "cpu":
            batch = move_data_to_device(batch, device)
        if after is not None:
            batch = after(batch, dataloader_idx)
        convert = self.convert_input
        return convert(batch) if convert is not None else batch
