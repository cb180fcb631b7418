"""Distributed samplers for the dataloaders of a multi-process run.

Training loaders get a ``DistributedSampler`` (each rank a shard; padded so every rank runs the same
number of steps, which DDP's gradient all-reduce needs) that a mid-epoch resume can start part-way. Validation, test and predict loaders get an
:class:`_UnpaddedDistributedSampler`: each sample goes to exactly one rank, nothing is repeated, so
epoch-level metrics and predictions count every sample once (ranks may run different numbers of
evaluation batches; featherlight reduces logged values only at epoch end, which every rank reaches).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler


class _UnpaddedDistributedSampler(DistributedSampler):
    """Like ``DistributedSampler`` but without padding: rank ``r`` gets indices ``r, r + W, r + 2W, ...``.

    ``len(dataset)`` need not be divisible by the number of replicas; ranks may get one sample fewer
    than others (or none, when there are fewer samples than ranks).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        total = len(dataset)  # type: ignore[arg-type]
        self.total_size = total
        self.num_samples = len(range(rank, total, num_replicas))

    def __iter__(self) -> Iterator[int]:
        total = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(total, generator=g).tolist()
        else:
            indices = list(range(total))
        return iter(indices[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class _ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that a mid-epoch resume can start part-way through its shard (the order depends
    only on ``seed`` and ``epoch``, so skipping the first ``skip`` indices loads nothing twice).

    A resume with another number of processes hands it the rest of the interrupted epoch instead
    (:meth:`_continue_epoch`, see ``featherlight.trainer.data._EpochContinuation``); later epochs are its own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0
        self._continuation: Any = None
        self._current: Optional[dict] = None

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        continuation, self._continuation = self._continuation, None
        self._current = None if continuation is None else continuation.state()
        if continuation is not None:
            return iter(list(continuation.indices))
        indices = super().__iter__()
        if skip:
            indices = iter(list(indices)[skip:])
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: Optional[dict], skip: int) -> None:
        if state and "epoch" in state:
            self.epoch = int(state["epoch"])
        self._skip = skip

    def _order_state(self) -> dict:
        """The running epoch's sample order, for a resume with another number of processes."""
        if self._current is not None:
            return dict(self._current)
        from featherlight.trainer.data import _native_order_state

        order = {"kind": "distributed", "n": len(self.dataset), "seed": int(self.seed),  # type: ignore[arg-type]
                 "epoch": int(self.epoch), "shuffle": bool(self.shuffle)}
        length = self.total_size if self.drop_last else len(self.dataset)  # type: ignore[arg-type]
        return _native_order_state(order, world_size=self.num_replicas, length=length)

    def _continue_epoch(self, continuation: Any) -> None:
        self._continuation = continuation


def _seed() -> int:
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


def _warn(trainer: Any, message: str) -> None:
    cache = getattr(trainer, "_warnings", None)
    if cache is not None:
        cache.warn(message)
    else:  # pragma: no cover - a trainer always has one
        from featherlight.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(message)


def _loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    """Every constructor argument of ``loader`` except the dataset and the sampling ones."""
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    for name in ("pin_memory_device", "in_order"):
        if hasattr(loader, name):
            kwargs[name] = getattr(loader, name)
    return kwargs


def _default_sampling(loader: DataLoader) -> Optional[bool]:
    """``shuffle`` if ``loader`` samples the default way (sequential or plain random), else ``None``."""
    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return None
    if type(sampler) is SequentialSampler:
        return False
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        return True
    return None


def distributed_loader(loader: DataLoader, prefix: str, num_replicas: int, rank: int,
                       shuffle: Optional[bool] = None, pad_eval: bool = False) -> DataLoader:
    """A copy of ``loader`` that reads only rank ``rank``'s share of the dataset."""
    if shuffle is None:
        shuffle = bool(_default_sampling(loader))
    if prefix == "train":
        sampler: DistributedSampler = _ResumableDistributedSampler(
            loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=_seed()
        )
    elif pad_eval:
        sampler = DistributedSampler(loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                     seed=_seed())
    else:
        sampler = _UnpaddedDistributedSampler(loader.dataset, num_replicas, rank, shuffle=shuffle, seed=_seed())
    return DataLoader(loader.dataset, sampler=sampler, **_loader_kwargs(loader))


def process_dataloader(loader: Any, prefix: str, trainer: Any) -> Any:
    """The loader a rank should read: rebuilt with a distributed sampler when that is safe, else as it is."""
    strategy = trainer.strategy
    if not getattr(trainer, "use_distributed_sampler", True) or strategy.world_size <= 1:
        return loader
    if not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        return loader  # an iterable dataset shards itself (e.g. with get_worker_info / the rank)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler) or isinstance(getattr(loader.batch_sampler, "sampler", None),
                                                             DistributedSampler):
        return loader  # already sharded by the user
    shuffle = _default_sampling(loader)
    if shuffle is None or type(loader) is not DataLoader:
        what = (f"a custom sampler ({type(sampler).__name__})" if type(loader) is DataLoader
                else f"a DataLoader subclass ({type(loader).__name__})")
        if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
            what = f"a custom batch_sampler ({type(loader.batch_sampler).__name__})"
        _warn(
            trainer,
            f"The {prefix} dataloader uses {what}, so featherlight did not give it a DistributedSampler: every rank "
            f"reads what it yields. Make it read only this rank's share (`trainer.global_rank` of "
            f"`trainer.world_size`) and pass `Trainer(use_distributed_sampler=False)` to silence this warning.",
        )
        return loader
    kwargs = strategy.distributed_sampler_kwargs or {}
    num_replicas = kwargs.get("num_replicas", strategy.world_size)
    rank = kwargs.get("rank", strategy.global_rank)
    pad_eval = bool(getattr(strategy, "_pad_eval_samplers", False))
    return distributed_loader(loader, prefix, num_replicas, rank, shuffle=shuffle, pad_eval=pad_eval)


__all__ = ["process_dataloader", "distributed_loader", "_UnpaddedDistributedSampler", "_ResumableDistributedSampler"]
