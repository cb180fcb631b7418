import logging
import os
import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from featherlight.utilities.seed import (
    _collect_rng_states,
    _set_rng_states,
    isolate_rng,
    pl_worker_init_function,
    reset_seed,
    seed_everything,
)


@pytest.fixture(autouse=True)
def clean_seed_env(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def _draw():
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def test_seed_everything_seeds_all_generators_and_env():
    assert seed_everything(1234) == 1234
    first = _draw()
    assert os.environ["PL_GLOBAL_SEED"] == "1234"
    assert os.environ["PL_SEED_WORKERS"] == "0"
    seed_everything(1234, workers=True)
    assert _draw() == first
    assert os.environ["PL_SEED_WORKERS"] == "1"
    seed_everything(4321)
    assert _draw() != first


def test_seed_none_defaults_to_zero_with_warning():
    with pytest.warns(UserWarning, match="No seed found, seed set to 0"):
        assert seed_everything() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        os.environ.pop("PL_GLOBAL_SEED")
        assert seed_everything(verbose=False) == 0


def test_seed_none_reads_env(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "77")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seed_everything() == 77


def test_seed_invalid_env(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "abc")
    with pytest.raises(ValueError, match="Invalid seed specified via PL_GLOBAL_SEED: 'abc'"):
        seed_everything()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_bounds(seed):
    with pytest.raises(ValueError, match="not in bounds"):
        seed_everything(seed)


def test_seed_bounds_inclusive_and_cast():
    assert seed_everything(2**32 - 1) == 2**32 - 1
    assert seed_everything(0) == 0
    assert seed_everything(5.0) == 5
    assert isinstance(seed_everything(5.0), int)


def test_seed_logs_message(monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("featherlight"), "propagate", True)
    caplog.set_level(logging.INFO, logger="featherlight")
    seed_everything(7)
    seed_everything(8, verbose=False)
    messages = [r.getMessage() for r in caplog.records]
    assert "Seed set to 7" in messages
    assert "Seed set to 8" not in messages


def test_reset_seed():
    seed_everything(99, workers=True)
    first = _draw()
    os.environ["PL_SEED_WORKERS"] = "1"
    _draw()
    reset_seed()
    assert _draw() == first
    assert os.environ["PL_SEED_WORKERS"] == "1"


def test_reset_seed_without_seed_is_noop():
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    reset_seed()
    assert torch.equal(torch.rand(2), expected)
    assert "PL_GLOBAL_SEED" not in os.environ


def _worker_draws(base_seed, worker_id, rank):
    torch.manual_seed(base_seed + worker_id)  # what a DataLoader worker starts with
    pl_worker_init_function(worker_id, rank=rank)
    return _draw()


def test_worker_init_function_distinct_and_reproducible():
    draws = {(w, r): _worker_draws(10, w, r) for w in range(3) for r in range(2)}
    assert _worker_draws(10, 1, 1) == draws[(1, 1)]
    flat_torch = [tuple(d[0]) for d in draws.values()]
    flat_python = [d[1] for d in draws.values()]
    flat_numpy = [tuple(d[2]) for d in draws.values()]
    for values in (flat_torch, flat_python, flat_numpy):
        assert len(set(values)) == len(values)
    # Worker 1 with base seed 10 must not replay worker 0 with base seed 11 (same torch.initial_seed()).
    assert _worker_draws(10, 1, 0) != _worker_draws(11, 0, 0)
    # Not the streams the worker had before the init function ran.
    torch.manual_seed(10 + 1)
    assert torch.rand(3).tolist() != draws[(1, 0)][0]


def test_worker_init_function_uses_global_rank(monkeypatch):
    from featherlight.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    torch.manual_seed(5)
    pl_worker_init_function(0)
    implicit = _draw()
    assert implicit == _worker_draws(5, 0, 1)
    assert implicit != _worker_draws(5, 0, 0)


class _RandomDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([torch.rand(1).item(), random.random(), float(np.random.rand())])


def _loader_values(seed):
    seed_everything(seed, verbose=False)
    loader = DataLoader(_RandomDataset(), batch_size=1, num_workers=2, worker_init_fn=pl_worker_init_function)
    return torch.cat(list(loader)).tolist()


def test_worker_init_function_in_real_dataloader():
    first = _loader_values(3)
    assert first == _loader_values(3)
    # Items 0 and 1 come from the first draw of worker 0 and worker 1: all three generators differ per worker.
    assert all(a != b for a, b in zip(first[0], first[1]))


def test_collect_and_set_rng_states_roundtrip():
    states = _collect_rng_states()
    assert set(states) == {"torch", "python", "numpy", "torch.cuda"}
    assert isinstance(states["numpy"], tuple) and states["numpy"][0] == "MT19937"
    assert isinstance(states["python"], tuple)
    expected = _draw()
    _draw()
    _set_rng_states(states)
    assert _draw() == expected
    assert "torch.cuda" not in _collect_rng_states(include_cuda=False)


def test_set_rng_states_accepts_serialised_python_state():
    states = _collect_rng_states(include_cuda=False)
    version, inner, gauss = states["python"]
    states["python"] = [version, list(inner), gauss]  # e.g. after a JSON/YAML round trip
    expected = random.random()
    _set_rng_states(states)
    assert random.random() == expected


def test_isolate_rng_restores_states():
    seed_everything(11, verbose=False)
    expected = _draw()
    seed_everything(11, verbose=False)
    with isolate_rng():
        _draw()
        _draw()
    assert _draw() == expected


def test_isolate_rng_restores_on_error():
    seed_everything(12, verbose=False)
    expected = _draw()
    seed_everything(12, verbose=False)
    with pytest.raises(RuntimeError), isolate_rng():
        _draw()
        raise RuntimeError("boom")
    assert _draw() == expected
