"""Global seeding, per-dataloader-worker seeding, and saving/restoring the RNG states.

numpy is optional: it is seeded and its state saved only when it is installed, and it is imported lazily.
"""
from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from featherlight.utilities.rank_zero import rank_zero_debug, rank_zero_info, rank_zero_only, rank_zero_warn

max_seed_value = 2**32 - 1  # numpy's legacy seeding accepts uint32 only
min_seed_value = 0

_numpy_available: bool | None = None


def _numpy() -> Any:
    """The numpy module, or ``None`` when numpy is not installed (checked once, imported on first need)."""
    global _numpy_available
    if _numpy_available is None:
        _numpy_available = importlib.util.find_spec("numpy") is not None
    if not _numpy_available:
        return None
    import numpy

    return numpy


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed Python's ``random``, numpy (if installed) and torch (CPU and every CUDA device) with ``seed``.

    Also sets the environment variables ``PL_GLOBAL_SEED`` (so spawned processes reseed identically) and
    ``PL_SEED_WORKERS`` (``"1"`` if ``workers``: the trainer then gives dataloaders without a
    ``worker_init_fn`` :func:`pl_worker_init_function`, so each worker of each rank gets its own stream).

    Args:
        seed: an integer in ``[0, 2**32 - 1]``. ``None`` reads ``PL_GLOBAL_SEED``; if that is unset the seed
            is 0 (with a warning when ``verbose``).
        workers: whether dataloader workers should be seeded by :func:`pl_worker_init_function`.
        verbose: log "Seed set to N" and warn about a missing seed.

    Returns:
        The seed used.

    Raises:
        ValueError: if the seed (given or from ``PL_GLOBAL_SEED``) is not an integer in range.
    """
    if seed is None:
        env_seed = os.environ.get("PL_GLOBAL_SEED")
        if env_seed is None:
            seed = 0
            if verbose:
                rank_zero_warn(f"No seed found, seed set to {seed}", stacklevel=3)
        else:
            try:
                seed = int(env_seed)
            except ValueError:
                raise ValueError(f"Invalid seed specified via PL_GLOBAL_SEED: {env_seed!r}") from None
    elif not isinstance(seed, int):
        seed = int(seed)

    if not min_seed_value <= seed <= max_seed_value:
        raise ValueError(f"{seed} is not in bounds, numpy accepts from {min_seed_value} to {max_seed_value}")

    if verbose:
        rank_zero_info(f"Seed set to {seed}", stacklevel=3)

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)  # also queues the seed for every CUDA device
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    return seed


def reset_seed() -> None:
    """Reseed with the seed a previous :func:`seed_everything` stored in the environment; no-op if none."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        return
    workers = os.environ.get("PL_SEED_WORKERS", "0")
    seed_everything(int(seed), workers=bool(int(workers)), verbose=False)


def _derive_worker_seeds(base_seed: int, worker_id: int, rank: int) -> tuple[int, int, list[int]]:
    """Three independent seeds (torch: 64 bit, python: 128 bit, numpy: 4 x 32 bit) for one worker of one rank.

    A cryptographic hash of the triple decorrelates neighbouring workers/ranks/base seeds completely, which a
    plain ``base_seed + worker_id`` would not (worker 1 of one epoch would replay worker 0 of the next).
    """
    import hashlib

    digest = hashlib.blake2b(f"{base_seed}|{worker_id}|{rank}".encode(), digest_size=32).digest()
    torch_seed = int.from_bytes(digest[0:8], "little")
    python_seed = int.from_bytes(digest[8:24], "little")
    numpy_seed = [int.from_bytes(digest[i : i + 4], "little") for i in range(16, 32, 4)]
    return torch_seed, python_seed, numpy_seed


def pl_worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` giving every dataloader worker on every rank its own reproducible RNG streams.

    Inside a worker, ``torch.initial_seed()`` is ``base_seed + worker_id`` where ``base_seed`` is drawn by the
    main process for each new iterator (so it follows the global seed and changes every epoch). The base seed,
    the worker id and the global rank (``rank`` or ``rank_zero_only.rank``) are hashed into seeds for torch,
    Python's ``random`` and numpy (if installed).
    """
    global_rank = rank if rank is not None else rank_zero_only.rank  # type: ignore[attr-defined]
    base_seed = torch.initial_seed() - worker_id
    rank_zero_debug(
        f"Initializing random number generators of process {global_rank} worker {worker_id} with base seed {base_seed}"
    )
    torch_seed, python_seed, numpy_seed = _derive_worker_seeds(base_seed, worker_id, global_rank)
    torch.manual_seed(torch_seed)
    random.seed(python_seed)
    np = _numpy()
    if np is not None:
        np.random.seed(numpy_seed)


def _collect_rng_states(include_cuda: bool = True) -> dict[str, Any]:
    """Snapshot the global RNG states: keys ``"torch"``, ``"python"``, ``"numpy"`` (if installed) and
    ``"torch.cuda"`` (if ``include_cuda``).

    ``"torch.cuda"`` is the list from ``torch.cuda.get_rng_state_all()`` when CUDA is already initialised and
    ``[]`` otherwise: reading it would initialise CUDA, which is slow and breaks fork-based workers, and an
    uninitialised CUDA generator still holds exactly the seed torch queued for it.
    """
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    np = _numpy()
    if np is not None:
        states["numpy"] = np.random.get_state()
    if include_cuda:
        states["torch.cuda"] = torch.cuda.get_rng_state_all() if _cuda_initialized() else []
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    """Restore the RNG states produced by :func:`_collect_rng_states`; absent keys are left untouched."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    cuda_states = states.get("torch.cuda")
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    if "numpy" in states:
        np = _numpy()
        if np is not None:
            np.random.set_state(states["numpy"])
    if "python" in states:
        version, internal_state, gauss = states["python"]
        # A round trip through some serialisers turns the inner tuple into a list; setstate needs a tuple.
        random.setstate((version, tuple(internal_state), gauss))


def _cuda_initialized() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Run the ``with`` block without disturbing the global RNGs: on exit (also on error) the torch, Python,
    numpy and (if ``include_cuda`` and CUDA is initialised on entry) CUDA RNG states are restored.

    >>> import torch
    >>> torch.manual_seed(1)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> with isolate_rng():
    ...     [torch.rand(1) for _ in range(3)]  # doctest: +ELLIPSIS
    [...]
    >>> torch.rand(1)
    tensor([0.7576])
    """
    states = _collect_rng_states(include_cuda)
    try:
        yield
    finally:
        _set_rng_states(states)


def rng_states_to_tensors(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` reads without any allow-list."""
    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss]
    return out


def rng_states_from_tensors(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out and isinstance(out["numpy"], (list, tuple)) and isinstance(out["numpy"][1], torch.Tensor):
        import numpy as np

        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "python" in out and isinstance(out["python"][1], torch.Tensor):
        version, internal, gauss = out["python"]
        out["python"] = (version, tuple(int(x) for x in internal.tolist()), gauss)
    return out
