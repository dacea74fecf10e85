"""Which images a trial trains on, and in which order: pure functions of seeds and iterations.

- Training subsets are *nested*: every subset is a prefix of one permutation of the training
  images drawn with the subset seed, so the 1k subset lies inside the 10k subset (paper §5).
- The data order is a pure function of (seed, iteration): the global batch of iteration `it`
  is fixed whatever the number of workers, and a run resumed at iteration k sees exactly the
  batches an uninterrupted run would have seen. Each rank takes its contiguous slice.
- The horizontal flip of every sample is drawn with the order, so it is reproducible too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

from study.errors import DataError


def subset_size(total: int, *, train_images: int | Literal["full"] | None = None,
                data_fraction: float | None = None, source: str = "the training set") -> int:
    """How many images a subset takes: an image count, a fraction, or 'full' (all of them)."""
    if (train_images is None) == (data_fraction is None):
        raise ValueError("give exactly one of train_images and data_fraction")
    if data_fraction is not None:
        if not 0 < data_fraction <= 1:
            raise ValueError(f"data_fraction {data_fraction!r} must be in (0, 1]")
        size = max(1, round(total * data_fraction)) if total else 0
    elif train_images == "full":
        size = total
    else:
        assert isinstance(train_images, int)
        if train_images > total:
            raise DataError(f"train_images {train_images} is larger than {source}, which has "
                            f"{total} usable images")
        size = train_images
    if size <= 0:
        raise DataError(f"the training subset is empty: {source} has {total} usable images")
    return size


def nested_subset(image_ids: Sequence[int], size: int, seed: int) -> list[int]:
    """The first `size` ids of a seeded permutation of the sorted ids (returned sorted).

    For one seed, a smaller subset is always inside a larger one; the result does not depend on
    the order in which `image_ids` are given.
    """
    ids = np.array(sorted(image_ids), dtype=np.int64)
    if not 0 < size <= len(ids):
        raise DataError(f"cannot take {size} images from a set of {len(ids)}")
    perm = np.random.default_rng([seed, 0x5B5E7]).permutation(len(ids))
    return sorted(ids[perm[:size]].tolist())


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, epoch, n])
    order = rng.permutation(n)
    flips = rng.random(n) < 0.5
    return order, flips


def global_batch(seed: int, iteration: int, n: int, batch_size: int,
                 flip: bool = True) -> list[tuple[int, bool]]:
    """(dataset index, horizontal flip) for each sample of iteration `iteration` (0-based).

    Samples are consumed epoch by epoch: global sample g = iteration * batch_size + j lies in
    epoch g // n, at position g % n of that epoch's permutation.
    """
    if n <= 0 or batch_size <= 0 or iteration < 0:
        raise ValueError(f"need n > 0, batch_size > 0, iteration >= 0; got {n}, {batch_size}, {iteration}")
    out = []
    for g in range(iteration * batch_size, (iteration + 1) * batch_size):
        order, flips = _epoch_order(seed, g // n, n)
        out.append((int(order[g % n]), bool(flips[g % n]) and flip))
    return out


def rank_slice(batch: Sequence[tuple[int, bool]], rank: int, world_size: int) -> list[tuple[int, bool]]:
    """The contiguous part of a global batch that `rank` of `world_size` trains on."""
    if len(batch) % world_size:
        raise ValueError(f"global batch {len(batch)} is not divisible by {world_size} workers")
    per = len(batch) // world_size
    return list(batch[rank * per:(rank + 1) * per])


class IterationBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Batches for iterations [start_iter, max_iter) of one rank, for a torch DataLoader.

    Use as `DataLoader(dataset, batch_sampler=...)`; the dataset receives (index, flip) pairs.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start_iter: int, max_iter: int,
                 rank: int = 0, world_size: int = 1, flip: bool = True) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_iter, self.max_iter = start_iter, max_iter
        self.rank, self.world_size, self.flip = rank, world_size, flip

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for it in range(self.start_iter, self.max_iter):
            yield rank_slice(global_batch(self.seed, it, self.n, self.batch_size, self.flip),
                             self.rank, self.world_size)

    def __len__(self) -> int:
        return max(0, self.max_iter - self.start_iter)

