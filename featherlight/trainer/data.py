"""Dataloaders: where they come from, how many batches each run takes, and worker seeding."""
from __future__ import annotations

import itertools
import math
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

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
    loader = trainer.strategy_process_dataloader(loader, prefix)
    if prefix == "train":
        loader = _make_resumable(loader)
    return loader


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


def _trailing_draw(n: int, generator: torch.Generator) -> Iterator[int]:
    """RandomSampler draws one more permutation when its order runs out (and uses none of it); made at the same
    moment here, so a user generator advances exactly as with a plain DataLoader."""
    torch.randperm(n, generator=generator)
    return
    yield  # a generator: the draw happens when the order is exhausted, not when the epoch starts


class _ResumableSampler(Sampler):
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

    def _order_state(self) -> Optional[dict]:
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

    def _continue_epoch(self, continuation: "_EpochContinuation") -> None:
        self._continuation = continuation


def _make_resumable(loader: Any) -> Any:
    """Swap a plain loader's Random/SequentialSampler for a :class:`_ResumableSampler` (same order)."""
    from torch.utils.data import RandomSampler, SequentialSampler

    if not _is_plain(loader):
        return loader
    sampler = loader.sampler
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        return _rebuild_loader(loader, _ResumableSampler(len(sampler.data_source), True, sampler.generator))
    if type(sampler) is SequentialSampler:
        return _rebuild_loader(loader, _ResumableSampler(len(sampler.data_source), False))
    return loader


def _resumable_sampler(loader: Any) -> Optional[Any]:
    """The sampler of ``loader`` that can skip samples on resume (ours, or one with the same verbs)."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and hasattr(sampler, "_skip") and hasattr(sampler, "load_state_dict"):
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
