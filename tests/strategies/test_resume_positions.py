"""The arithmetic of continuing an epoch with another number of processes (in one process, no process group):
where a checkpoint is in its epoch's sample order, and which samples each new rank reads."""
import pytest
import torch
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler

from featherlight.strategies.samplers import (_EpochContinuation, _epoch_order, _ResumableDistributedSampler,
                                             _ResumableSampler, _samples_done)


def _data(n):
    return TensorDataset(torch.arange(n))


def _shards(n, world, epoch=0, seed=0, drop_last=False):
    out = []
    for r in range(world):
        s = DistributedSampler(_data(n), num_replicas=world, rank=r, shuffle=True, seed=seed, drop_last=drop_last)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize(("n", "world", "batch", "k"), [(32, 2, 4, 1), (32, 2, 4, 3), (30, 4, 3, 2), (7, 3, 2, 1)])
def test_after_k_batches_per_rank_the_first_world_k_batch_positions_are_done(n, world, batch, k):
    """DistributedSampler gives rank r positions r, r+W, ...: k batches of B per rank are positions [0, W*k*B)."""
    shards = _shards(n, world, epoch=5, seed=3)
    order = _epoch_order({"kind": "distributed", "n": n, "seed": 3, "epoch": 5, "shuffle": True})
    padded = order + order[: world * len(shards[0]) - n]
    seen = sorted(i for s in shards for i in s[: k * batch])
    assert seen == sorted(padded[: world * k * batch])
    sampler = _ResumableDistributedSampler(_data(n), num_replicas=world, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(5)
    data = sampler.order_state()
    data["end"] = min(data["length"], world * batch * -(-len(shards[0]) // batch))
    assert _samples_done(data, "ended", k - 1, batch) == min(n, world * k * batch)
    assert _samples_done(data, "batch", k - 1, batch) == min(n, world * (k - 1) * batch)  # that batch runs again
    assert _samples_done(data, "epoch_end", 0, batch) == data["end"]


def test_single_process_orders_are_redrawn_exactly():
    sampler = _ResumableSampler(10, shuffle=True)
    first = list(sampler)
    assert _epoch_order({"kind": "random", "n": 10, **sampler.state_dict()}) == first
    g = torch.Generator().manual_seed(7)
    sampler = _ResumableSampler(10, shuffle=True, generator=g)
    first = list(sampler)
    assert _epoch_order({"kind": "random", "n": 10, **sampler.state_dict()}) == first
    assert _epoch_order({"kind": "sequential", "n": 4}) == [0, 1, 2, 3]
    assert _epoch_order({"kind": "distributed", "n": 4, "seed": 0, "epoch": 3, "shuffle": False}) == [0, 1, 2, 3]


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_continuation_splits_the_rest_by_stride(world, rank):
    order = {"kind": "distributed", "n": 20, "seed": 1, "epoch": 2, "shuffle": True}
    full = _epoch_order(order)
    c = _EpochContinuation(order, consumed=8, end=20, world_size=world, rank=rank, batch_size=4, drop_last=False)
    rest = full[8:]
    per_rank = -(-len(rest) // world)
    padded = (rest * 2)[: per_rank * world]  # padded with the rest's own first samples
    assert c.indices == padded[rank::world] and c.remaining == 12 and c.padding == per_rank * world - 12
    assert c.num_batches == -(-per_rank // 4)
    every = sorted(i for r in range(world) for i in
                   _EpochContinuation(order, 8, 20, world, r, 4, False).indices)
    assert set(every) == set(rest) and len(every) == per_rank * world
    dropped = _EpochContinuation(order, 8, 20, world, rank, 4, drop_last=True)
    assert dropped.num_batches == per_rank // 4


def test_continuation_with_fewer_samples_left_than_ranks_and_none_left():
    order = {"kind": "sequential", "n": 10}
    c = [_EpochContinuation(order, 9, 10, 3, r, 2, False) for r in range(3)]
    assert [x.indices for x in c] == [[9], [9], [9]] and all(x.num_batches == 1 for x in c)
    empty = _EpochContinuation(order, 10, 10, 2, 1, 2, False)
    assert empty.indices == [] and empty.num_batches == 0


def test_samplers_take_a_continuation_for_one_epoch_and_record_it():
    order = {"kind": "distributed", "n": 12, "seed": 0, "epoch": 0, "shuffle": True}
    full = _epoch_order(order)
    c = _EpochContinuation(order, consumed=4, end=12, world_size=1, rank=0, batch_size=2, drop_last=False)
    c.base_batch = 2
    sampler = _ResumableSampler(12, shuffle=True)
    sampler.continue_epoch(c)
    assert list(sampler) == full[4:]
    state = sampler.order_state()
    assert state["continued"] and (state["base"], state["base_batch"], state["world_size"]) == (4, 2, 1)
    # a checkpoint after batch 3 of that epoch (2 more batches of 2): 4 + 1 * 2 * 2 samples done
    assert _samples_done(state, "ended", 3, 2) == 8
    assert len(list(sampler)) == 12 and not sampler.order_state()["continued"]  # the next epoch is its own
    dist = _ResumableDistributedSampler(_data(12), num_replicas=2, rank=1, shuffle=True, seed=0)
    c2 = _EpochContinuation(order, consumed=5, end=12, world_size=2, rank=1, batch_size=2, drop_last=False)
    dist.continue_epoch(c2)
    assert list(dist) == (full[5:] + full[5:6])[1::2]
    assert dist.order_state()["continued"]
    assert list(dist) == _shards(12, 2)[1] and not dist.order_state()["continued"]
