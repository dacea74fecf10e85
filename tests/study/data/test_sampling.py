from __future__ import annotations

import collections

import pytest

from study.errors import DataError
from study.data.sampling import (IterationBatchSampler, _epoch_order, global_batch, nested_subset,
                                 rank_slice, subset_size)


def test_subsets_are_nested_and_deterministic() -> None:
    ids = list(range(1000, 3000, 2))  # 1000 ids, not contiguous
    s100, s300, s999 = (nested_subset(ids, n, seed=0) for n in (100, 300, 999))
    assert len(s100) == 100 and len(set(s100)) == 100 and set(s100) <= set(ids)
    assert set(s100) <= set(s300) <= set(s999)
    assert nested_subset(list(reversed(ids)), 300, seed=0) == s300  # input order does not matter
    assert nested_subset(ids, 300, seed=0) == s300
    other = nested_subset(ids, 300, seed=1)
    assert other != s300 and set(nested_subset(ids, 100, seed=1)) <= set(other)
    assert nested_subset(ids, 1000, seed=3) == sorted(ids)
    with pytest.raises(DataError, match="cannot take 1001 images from a set of 1000"):
        nested_subset(ids, 1001, seed=0)


def test_subset_size() -> None:
    assert subset_size(1000, train_images="full") == 1000
    assert subset_size(1000, train_images=250) == 250
    assert subset_size(1000, data_fraction=0.1) == 100
    assert subset_size(15, data_fraction=0.01) == 1  # never rounds down to nothing
    with pytest.raises(DataError, match="train_images 5000 is larger than train.json, which has 1000"):
        subset_size(1000, train_images=5000, source="train.json")
    with pytest.raises(DataError, match="the training subset is empty"):
        subset_size(0, train_images="full")
    with pytest.raises(ValueError, match="exactly one"):
        subset_size(10, train_images=5, data_fraction=0.5)


def test_order_is_a_pure_function_of_seed_and_iteration() -> None:
    n, batch = 10, 4
    first = [global_batch(7, it, n, batch) for it in range(20)]
    _epoch_order.cache_clear()
    again = [global_batch(7, it, n, batch) for it in reversed(range(20))][::-1]
    assert first == again
    assert [global_batch(8, it, n, batch) for it in range(20)] != first
    # samples are consumed epoch by epoch: every index exactly once per epoch of n samples
    flat = [i for b in first for i, _ in b]
    for e in range(len(flat) // n):
        assert sorted(flat[e * n:(e + 1) * n]) == list(range(n))
    # iteration 2 straddles epochs 0 and 1: its first two samples end epoch 0
    assert [i for i, _ in first[2]][:2] == flat[8:10]
    flips = collections.Counter(f for b in first for _, f in b)
    assert 25 < flips[True] < 55  # about half of 80 samples
    assert all(not f for _, f in global_batch(7, 3, n, batch, flip=False))


def test_resumed_sampler_sees_the_same_batches() -> None:
    full = list(IterationBatchSampler(50, 8, seed=3, start_iter=0, max_iter=30))
    resumed = list(IterationBatchSampler(50, 8, seed=3, start_iter=17, max_iter=30))
    assert len(full) == 30 and len(resumed) == 13 == len(IterationBatchSampler(50, 8, seed=3,
                                                                                start_iter=17, max_iter=30))
    assert resumed == full[17:]


def test_ranks_split_the_global_batch() -> None:
    ranks = [list(IterationBatchSampler(50, 8, seed=3, start_iter=5, max_iter=9, rank=r, world_size=4))
             for r in range(4)]
    for k, it in enumerate(range(5, 9)):
        assert [s for r in range(4) for s in ranks[r][k]] == global_batch(3, it, 50, 8)
    assert rank_slice([(0, False)] * 8, 1, 2) == [(0, False)] * 4
    with pytest.raises(ValueError, match="not divisible by 3 workers"):
        rank_slice([(0, False)] * 8, 0, 3)
