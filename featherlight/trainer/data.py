"""Dataloaders: where they come from, how many batches each run takes, and worker seeding."""
from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from torch.utils.data import DataLoader, IterableDataset

from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}


def _overrides(obj: Any, hook: str) -> bool:
    from featherlight.core.hooks import DataHooks
    from featherlight.trainer.dispatch import _is_overridden

    return obj is not None and _is_overridden(obj, hook, DataHooks)


def _request_dataloader(trainer: "Trainer", prefix: str) -> Any:
    """The loader(s) for ``prefix``: passed to the entry point, else the datamodule's, else the module's."""
    given = trainer._given_loaders.get(prefix)
    if given is not None:
        return given
    hook = _HOOK[prefix]
    source = trainer.datamodule if _overrides(trainer.datamodule, hook) else None
    if source is None and _overrides(trainer.lightning_module, hook):
        source = trainer.lightning_module
    if source is None:
        return None
    prev = trainer._current_fx
    trainer._current_fx = hook
    try:
        if trainer._dispatch._profiling:
            with trainer.profiler.profile(f"[{type(source).__name__}].{hook}"):
                return getattr(source, hook)()
        return getattr(source, hook)()
    finally:
        trainer._current_fx = prev


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
    """How many batches of ``loader`` a run takes under ``limit_*_batches=limit``."""
    n: Union[int, float] = len(loader) if _has_len(loader) else float("inf")
    if isinstance(limit, int):
        return min(n, limit)
    if n == float("inf"):
        if limit == 1.0:
            return n
        raise MisconfigurationException(
            f"`{flag}={limit}` is a fraction, but the dataloader has no length (an IterableDataset). "
            f"Pass an int number of batches instead, e.g. `{flag}=100`."
        )
    out = int(n * limit)
    if limit > 0 and out == 0 and n > 0:
        min_fraction = 1.0 / n
        raise MisconfigurationException(
            f"You requested to check {limit} of the dataloader but {limit} * {n} < 1 batch. Increase `{flag}`: "
            f"try at least `{flag}={min_fraction:.4f}` or an int, e.g. `{flag}=1`."
        )
    return out


def _check_limit(value: Any, flag: str) -> Union[int, float]:
    if isinstance(value, bool):
        raise MisconfigurationException(f"`{flag}` must be an int or a float in [0, 1], got {value!r}.")
    if isinstance(value, float) and value.is_integer() and value > 1.0:
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise MisconfigurationException(f"`{flag}` must be non-negative, got {value}.")
        return value
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise MisconfigurationException(
                f"`{flag}={value}` is out of range: pass a float in [0.0, 1.0] (a fraction) or an int (batches)."
            )
        return value
    raise MisconfigurationException(f"`{flag}` must be an int or a float, got {type(value).__name__}.")


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
    if trainer.overfit_batches > 0 and prefix == "train":
        from torch.utils.data import RandomSampler

        if isinstance(getattr(loader, "sampler", None), RandomSampler):
            from featherlight.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                "You requested to overfit but enabled training dataloader shuffling. We are turning off the "
                "training dataloader shuffling for you."
            )
            loader = _replace_sampler(loader, shuffle=False)
    return trainer.strategy_process_dataloader(loader, prefix)


def _replace_sampler(loader: DataLoader, shuffle: bool = False, sampler: Any = None) -> DataLoader:
    """A new DataLoader like ``loader`` but with ``sampler`` (or a sequential/random one)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if sampler is None:
        sampler = RandomSampler(loader.dataset) if shuffle else SequentialSampler(loader.dataset)
    batch_sampler = getattr(loader, "batch_sampler", None)
    kwargs = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if batch_sampler is not None and type(batch_sampler).__name__ == "BatchSampler":
        return type(loader)(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                            drop_last=loader.drop_last, **kwargs) if type(loader) is DataLoader else \
            DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                       **kwargs)
    raise MisconfigurationException(
        "This DataLoader uses a custom batch_sampler, so featherlight cannot replace its sampler. "
        "Build the sampler you need yourself and set `use_distributed_sampler=False`."
    )


class _MaxSizeCycle:
    """Several training loaders at once: each batch holds one batch of every loader (a dict or list);
    shorter loaders restart until the longest is exhausted (Lightning's ``max_size_cycle``)."""

    def __init__(self, loaders: Any) -> None:
        self.loaders = loaders
        self._keys = list(loaders.keys()) if isinstance(loaders, dict) else None
        self._items = list(loaders.values()) if isinstance(loaders, dict) else list(loaders)

    def __len__(self) -> int:
        return max(len(d) for d in self._items)

    def __iter__(self) -> Iterator:
        iters = [iter(d) for d in self._items]
        for _ in range(len(self)):
            batch = []
            for i, it in enumerate(iters):
                try:
                    batch.append(next(it))
                except StopIteration:
                    iters[i] = iter(self._items[i])
                    batch.append(next(iters[i]))
            yield dict(zip(self._keys, batch)) if self._keys is not None else batch


def _combine_train(loaders: Any) -> Any:
    if isinstance(loaders, (dict, list, tuple)):
        if len(loaders) == 1:
            return next(iter(loaders.values())) if isinstance(loaders, dict) else loaders[0]
        return _MaxSizeCycle(loaders)
    return loaders


def _is_iterable_dataset(loader: Any) -> bool:
    return isinstance(getattr(loader, "dataset", None), IterableDataset)


def _sanity_or_limit(n: Union[int, float], limit: Optional[int]) -> Union[int, float]:
    if limit is None or limit < 0:
        return n
    return min(n, limit) if not math.isinf(n) else limit
