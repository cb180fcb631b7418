"""Distributed samplers for the dataloaders of a multi-process run.

Training loaders get a ``DistributedSampler`` (each rank a shard; padded so every rank runs the same
number of steps, which DDP's gradient all-reduce needs) that a mid-epoch resume can start part-way. Validation, test and predict loaders get an
:class:`_UnpaddedDistributedSampler`: each sample goes to exactly one rank, nothing is repeated, so
epoch-level metrics and predictions count every sample once (ranks may run different numbers of
evaluation batches; featherlight reduces logged values only at epoch end, which every rank reaches).
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler


class ResumableSampler(Sampler):
    """What a sampler offers featherlight's exact resume: starting an epoch part-way without loading the samples
    it skips, and (for a resume with another number of processes) the epoch's sample order.

    ``state_dict()`` describes the running epoch's order; ``load_state_dict(state, skip)`` makes the next
    ``__iter__`` redraw that order and leave out its first ``skip`` indices; ``order_state()`` describes the
    order in samples (see :class:`_EpochContinuation`); ``continue_epoch(c)`` makes the next ``__iter__`` yield
    the continuation's indices instead.
    """

    def state_dict(self) -> Optional[dict]:
        raise NotImplementedError

    def load_state_dict(self, state: Optional[dict], skip: int) -> None:
        raise NotImplementedError

    def order_state(self) -> Optional[dict]:
        return None

    def continue_epoch(self, continuation: "_EpochContinuation") -> None:
        raise NotImplementedError


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


class _ResumableDistributedSampler(DistributedSampler, ResumableSampler):
    """``DistributedSampler`` that a mid-epoch resume can start part-way through its shard (the order depends
    only on ``seed`` and ``epoch``, so skipping the first ``skip`` indices loads nothing twice).

    A resume with another number of processes hands it the rest of the interrupted epoch instead
    (:meth:`continue_epoch`, see :class:`_EpochContinuation`); later epochs are its own.
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

    def order_state(self) -> dict:
        """The running epoch's sample order, for a resume with another number of processes."""
        if self._current is not None:
            return dict(self._current)
        order = {"kind": "distributed", "n": len(self.dataset), "seed": int(self.seed),  # type: ignore[arg-type]
                 "epoch": int(self.epoch), "shuffle": bool(self.shuffle)}
        length = self.total_size if self.drop_last else len(self.dataset)  # type: ignore[arg-type]
        return _native_order_state(order, world_size=self.num_replicas, length=length)

    def continue_epoch(self, continuation: Any) -> None:
        self._continuation = continuation


def _seed() -> int:
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


def _warn(trainer: Any, message: str) -> None:
    trainer.warnings.warn(message)  # once per run


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
    if prefix == "train":
        # Lightning's rule: the training DistributedSampler always shuffles (seeded from `seed_everything`), unless
        # overfitting, whatever order the loader itself reads in
        shuffle = not getattr(trainer, "overfit_batches", 0)
    kwargs = strategy.distributed_sampler_kwargs or {}
    num_replicas = kwargs.get("num_replicas", strategy.world_size)
    rank = kwargs.get("rank", strategy.global_rank)
    pad_eval = strategy.pad_eval_samplers
    return distributed_loader(loader, prefix, num_replicas, rank, shuffle=shuffle, pad_eval=pad_eval)



# ------------------------------------------------------------------ one process: the order of a plain DataLoader
def _trailing_draw(n: int, generator: torch.Generator) -> Iterator[int]:
    """RandomSampler draws one more permutation when its order runs out (and uses none of it); made at the same
    moment here, so a user generator advances exactly as with a plain DataLoader."""
    torch.randperm(n, generator=generator)
    return
    yield  # a generator: the draw happens when the order is exhausted, not when the epoch starts


class _ResumableSampler(ResumableSampler):
    """The order of ``RandomSampler`` (same random draws) or ``SequentialSampler``, able to start an epoch
    part-way through. A mid-epoch resume skips samples here, without loading a single one.

    ``state_dict`` is the epoch's shuffle seed (or the user generator's state at the epoch's start);
    ``_skip`` is the number of samples the next ``__iter__`` leaves out (set by the loop on resume).
    """

    def __init__(self, n: int, shuffle: bool, generator: Optional[torch.Generator] = None) -> None:
        self.n = n
        self.shuffle = shuffle
        self.generator = generator
        self._state: Optional[dict] = None
        self._restore: Optional[dict] = None
        self._skip = 0
        self._continuation: Optional[_EpochContinuation] = None  # set by a resume at another world size
        self._current: Optional[dict] = None  # the running epoch's continuation, if it is one

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        # a plain function returning C-level iterators, not a generator: the batch sampler pulls every index
        # through here, and a generator frame resumed per index costs microseconds per batch. It runs at the same
        # moment a generator's body would: the DataLoader's BatchSampler calls iter() on its first batch.
        skip, self._skip = self._skip, 0
        continuation, self._continuation = self._continuation, None
        self._current = None if continuation is None else continuation.state()
        if continuation is not None:  # the rest of an epoch another number of processes began
            return iter(continuation.indices)
        if not self.shuffle:
            return iter(range(skip, self.n))
        restore, self._restore = self._restore, None
        if self.generator is None:
            # the draw RandomSampler makes from the global RNG, so runs match plain DataLoaders bit for bit
            seed = restore["seed"] if restore else int(torch.empty((), dtype=torch.int64).random_().item())
            self._state = {"seed": seed}
            generator = torch.Generator()
            generator.manual_seed(seed)
        else:
            generator = self.generator
            if restore:
                generator.set_state(restore["generator"])
            self._state = {"generator": generator.get_state()}
        order = torch.randperm(self.n, generator=generator).tolist()
        return itertools.chain(order[skip:], _trailing_draw(self.n, generator))

    def state_dict(self) -> Optional[dict]:
        return self._state

    def load_state_dict(self, state: Optional[dict], skip: int) -> None:
        self._restore, self._skip = state, skip

    def order_state(self) -> Optional[dict]:
        """The running epoch's sample order, for a resume with another number of processes."""
        if self._current is not None:
            return dict(self._current)
        if self.shuffle:
            if self._state is None:
                return None
            order = {"kind": "random", "n": self.n, **self._state}
        else:
            order = {"kind": "sequential", "n": self.n}
        return _native_order_state(order, world_size=1, length=self.n)

    def continue_epoch(self, continuation: "_EpochContinuation") -> None:
        self._continuation = continuation


class _ResumableSequentialSampler(_ResumableSampler, SequentialSampler):
    """A :class:`_ResumableSampler` in ``SequentialSampler``'s order that also *is* one for ``isinstance`` (code
    that asks whether a loader shuffles sees what it replaced)."""

    def __init__(self, data_source: Any) -> None:
        _ResumableSampler.__init__(self, len(data_source), False)
        self.data_source = data_source


class _ResumableRandomSampler(_ResumableSampler, RandomSampler):
    """A :class:`_ResumableSampler` making ``RandomSampler``'s draws that also *is* one for ``isinstance``."""

    def __init__(self, data_source: Any, generator: Optional[torch.Generator] = None) -> None:
        _ResumableSampler.__init__(self, len(data_source), True, generator)
        self.data_source, self.replacement, self._num_samples = data_source, False, None


def resumable_sampler(loader: Any) -> Optional[ResumableSampler]:
    """The sampler of ``loader`` that can skip samples on resume, if it has one."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


# ------------------------------------------------------------------ an epoch continued by another world size
def _native_order_state(order: dict, world_size: int, length: int) -> dict:
    """A sampler's own epoch: ``order`` split by stride over ``world_size`` ranks from its first sample."""
    return {"order": order, "world_size": int(world_size), "length": int(length), "base": 0, "base_batch": 0,
            "end": None, "continued": False}


def _epoch_order(order: dict) -> list[int]:
    """The whole epoch's sample order a sampler drew, redrawn from its description.

    ``distributed``: ``DistributedSampler``'s rule (a generator seeded with ``seed + epoch``);
    ``random``: :class:`_ResumableSampler`'s (the epoch's seed, or the user generator's state);
    ``sequential``: ``0 .. n-1``.
    """
    kind, n = order.get("kind"), int(order["n"])
    if kind == "sequential" or (kind == "distributed" and not order.get("shuffle", True)):
        return list(range(n))
    generator = torch.Generator()
    if kind == "distributed":
        generator.manual_seed(int(order["seed"]) + int(order["epoch"]))
    elif kind == "random" and "seed" in order:
        generator.manual_seed(int(order["seed"]))
    elif kind == "random" and "generator" in order:
        generator.set_state(order["generator"])
    else:
        raise ValueError(f"unknown sample order {order!r}")
    return torch.randperm(n, generator=generator).tolist()


def _samples_done(data: dict, phase: str, batch_idx: int, batch_size: int) -> int:
    """How many samples of the epoch's order a checkpoint at ``phase``/``batch_idx`` has trained on.

    Rank ``r`` of ``W`` reads positions ``base + r, base + r + W, ...`` of the order (``base`` is 0 unless the
    epoch was itself continued from another world size), ``batch_size`` at a time, so after ``k`` batches of
    every rank the positions ``base .. base + W*k*batch_size - 1`` are done, whatever the rank.
    """
    end = int(data["end"])
    if phase == "epoch_end":
        return end
    done = batch_idx if phase == "batch" else batch_idx + 1  # a checkpoint inside a batch runs it again
    batches = max(0, done - int(data["base_batch"]))
    return min(end, int(data["base"]) + int(data["world_size"]) * batch_size * batches)


class _EpochContinuation:
    """The samples of an interrupted epoch not trained yet, split over the ranks of the resumed run.

    ``remaining = order[consumed:end]`` is split by stride like ``DistributedSampler`` splits a whole epoch:
    rank ``r`` of ``world_size`` gets ``remaining[r::world_size]``, after padding ``remaining`` with its own
    first samples to a multiple of ``world_size`` (every rank must run the same number of batches).
    """

    def __init__(self, order: dict, consumed: int, end: int, world_size: int, rank: int, batch_size: int,
                 drop_last: bool) -> None:
        self.order, self.consumed, self.end = order, int(consumed), int(end)
        self.world_size, self.batch_size = int(world_size), int(batch_size)
        remaining = _epoch_order(order)[self.consumed:self.end]
        self.remaining = len(remaining)
        per_rank = math.ceil(len(remaining) / self.world_size)
        padding = per_rank * self.world_size - len(remaining)
        self.padding = padding
        while padding > 0:  # (more than once only when there are fewer samples left than ranks)
            remaining += remaining[:padding]
            padding = per_rank * self.world_size - len(remaining)
        self.indices = remaining[rank::self.world_size]
        self.num_batches = per_rank // self.batch_size if drop_last else math.ceil(per_rank / self.batch_size)
        self.base_batch = 0  # the batch index the resumed epoch starts at (set by the resume)

    def state(self) -> dict:
        """What a checkpoint taken later in this epoch records (see :func:`_samples_done`)."""
        return {"order": self.order, "world_size": self.world_size, "length": int(self.order["n"]),
                "base": self.consumed, "base_batch": self.base_batch, "end": self.end, "continued": True}


__all__ = ["process_dataloader", "distributed_loader", "resumable_sampler", "ResumableSampler"]
