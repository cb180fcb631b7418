"""Distributed samplers (in one process: the rank and world size are given, no process group needed)."""
import warnings
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from featherlight.strategies.samplers import _UnpaddedDistributedSampler, process_dataloader
from featherlight.utilities.rank_zero import WarningCache


def _trainer(world_size=2, rank=1, use_distributed_sampler=True, pad_eval=False):
    strategy = SimpleNamespace(world_size=world_size, global_rank=rank, pad_eval_samplers=pad_eval,
                               distributed_sampler_kwargs={"num_replicas": world_size, "rank": rank})
    return SimpleNamespace(strategy=strategy, use_distributed_sampler=use_distributed_sampler,
                           warnings=WarningCache())


def _data(n=10):
    return TensorDataset(torch.arange(n))


def _indices(loader):
    return [int(i) for (batch,) in loader for i in batch]


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
def test_unpadded_sampler_gives_each_sample_to_one_rank(n):
    shards = [list(_UnpaddedDistributedSampler(_data(n), 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(_UnpaddedDistributedSampler(_data(n), 3, r)) for r in range(3)] == [len(s) for s in shards]
    assert shards[0] == list(range(0, n, 3))


def test_unpadded_sampler_shuffles_with_seed_and_epoch():
    a = [list(_UnpaddedDistributedSampler(_data(9), 2, r, shuffle=True, seed=3)) for r in range(2)]
    assert sorted(a[0] + a[1]) == list(range(9)) and a[0] + a[1] != list(range(9))
    s = _UnpaddedDistributedSampler(_data(9), 2, 0, shuffle=True, seed=3)
    s.set_epoch(1)
    assert list(s) != a[0]


def test_train_loader_gets_distributed_sampler_and_keeps_its_arguments(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")

    def collate(batch):
        return torch.utils.data.default_collate(batch)

    init = partial(print)
    generator = torch.Generator()
    loader = DataLoader(_data(10), batch_size=3, shuffle=True, num_workers=1, collate_fn=collate, pin_memory=False,
                        drop_last=True, worker_init_fn=init, persistent_workers=True, generator=generator,
                        prefetch_factor=3, timeout=5.0, multiprocessing_context="spawn")
    new = process_dataloader(loader, "train", _trainer())
    assert new is not loader and isinstance(new.sampler, DistributedSampler)
    assert new.sampler.shuffle and new.sampler.seed == 42
    assert new.sampler.num_replicas == 2 and new.sampler.rank == 1
    for name in ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "worker_init_fn",
                 "persistent_workers", "generator", "prefetch_factor", "timeout", "multiprocessing_context"):
        assert getattr(new, name) == getattr(loader, name), name



def test_train_sampler_always_shuffles_as_in_lightning_unless_overfitting(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    sequential = process_dataloader(DataLoader(_data(10), batch_size=2), "train", _trainer())
    assert sequential.sampler.shuffle and sequential.sampler.seed == 7
    expected = list(DistributedSampler(_data(10), num_replicas=2, rank=1, shuffle=True, seed=7))
    assert _indices(sequential) == expected and expected != [1, 3, 5, 7, 9]
    trainer = _trainer()
    trainer.overfit_batches = 2
    overfit = process_dataloader(DataLoader(_data(10), batch_size=2), "train", trainer)
    assert not overfit.sampler.shuffle and _indices(overfit) == [1, 3, 5, 7, 9]
    evaluation = process_dataloader(DataLoader(_data(10), batch_size=2), "val", _trainer())
    assert not evaluation.sampler.shuffle  # evaluation loaders keep their order


def test_train_sampler_resumes_part_way():
    loader = process_dataloader(DataLoader(_data(12), batch_size=2, shuffle=True), "train", _trainer(rank=0))
    sampler = loader.sampler
    sampler.set_epoch(3)
    full = list(sampler)
    assert sampler.state_dict() == {"seed": 0, "epoch": 3}
    sampler.set_epoch(0)
    sampler.load_state_dict({"seed": 0, "epoch": 3}, skip=4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applies to one epoch only


@pytest.mark.parametrize("prefix", ["val", "test", "predict"])
def test_eval_loaders_are_not_padded(prefix):
    loaders = [process_dataloader(DataLoader(_data(5), batch_size=2), prefix, _trainer(rank=r)) for r in (0, 1)]
    assert all(type(dl.sampler) is _UnpaddedDistributedSampler for dl in loaders)
    assert [_indices(dl) for dl in loaders] == [[0, 2, 4], [1, 3]]
    assert [len(dl) for dl in loaders] == [2, 1]


def test_pad_eval_for_strategies_that_need_equal_batches():
    loaders = [process_dataloader(DataLoader(_data(5), batch_size=1), "val", _trainer(rank=r, pad_eval=True))
               for r in (0, 1)]
    assert [len(dl) for dl in loaders] == [3, 3]


def test_batch_size_none_loader():
    loader = DataLoader(_data(4), batch_size=None)
    new = process_dataloader(loader, "predict", _trainer(rank=0))
    assert new.batch_size is None and [int(x[0]) for x in new] == [0, 2]


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(range(4))


class _MySampler(SequentialSampler):
    pass


class _MyBatchSampler(BatchSampler):
    pass


def test_loaders_left_alone():
    trainer = _trainer()
    plain = DataLoader(_data(4))
    assert process_dataloader(plain, "train", _trainer(use_distributed_sampler=False)) is plain
    assert process_dataloader(plain, "train", _trainer(world_size=1, rank=0)) is plain
    stream = DataLoader(_Stream())
    assert process_dataloader(stream, "train", trainer) is stream
    mine = DataLoader(_data(4), sampler=DistributedSampler(_data(4), num_replicas=2, rank=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert process_dataloader(mine, "train", trainer) is mine
    assert process_dataloader([1, 2], "train", trainer) == [1, 2]


def test_custom_samplers_are_kept_with_one_warning():
    trainer = _trainer()
    custom = DataLoader(_data(4), sampler=_MySampler(_data(4)))
    with pytest.warns(UserWarning, match=r"custom sampler \(_MySampler\).*use_distributed_sampler=False"):
        assert process_dataloader(custom, "train", trainer) is custom
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run
        assert process_dataloader(custom, "train", trainer) is custom
    batch = DataLoader(_data(4), batch_sampler=_MyBatchSampler(SequentialSampler(_data(4)), 2, False))
    with pytest.warns(UserWarning, match=r"custom batch_sampler \(_MyBatchSampler\)"):
        assert process_dataloader(batch, "val", trainer) is batch
    replacement = DataLoader(_data(4), sampler=RandomSampler(_data(4), replacement=True))
    with pytest.warns(UserWarning, match="RandomSampler"):
        assert process_dataloader(replacement, "train", trainer) is replacement
