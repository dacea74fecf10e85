"""Collectives over the data-parallel workers of one run; with one worker, no-ops (no process group)."""

from __future__ import annotations

from typing import Any

import torch


def sum_over_ranks(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Each value summed over all ranks (float64 all-reduce); every rank gets the sums."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def gather_over_ranks(items: list[Any], world_size: int) -> list[Any]:
    """Every rank's list, concatenated in rank order (all_gather_object)."""
    if world_size == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
