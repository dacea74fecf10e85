"""Every collective of a trial's (or the pre-training's) data-parallel workers, in one place.

Ray Train starts a process group for every job, one worker included: gloo on CPUs, NCCL on GPUs.
NCCL moves only GPU tensors, while what the loop sums and gathers lives on the CPU (loss sums,
sample counts, the divergence flag, detections for COCO evaluation, RNG states). So those travel
over a gloo group made beside the default one when the default is not gloo (as detectron2 does,
`comm._get_global_gloo_group`); gradients travel over the default group inside DDP.

Every function here runs whenever a process group exists, world size 1 included, so that a run on
one GPU goes through the same calls, groups and DDP wrapper as a run on eight. Without a process
group (a plain single-process trial) each is the identity. No other module of the project calls
`torch.distributed`; a test holds that.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_cpu_group: tuple[Any, Any] | None = None  # (the default group it was made for, the gloo group)


def active() -> bool:
    """Whether this process is one rank of a process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def describe() -> str:
    """The process group in words, for logs."""
    if not active():
        return "none (one process)"
    backend = str(dist.get_backend())
    beside = "the same group" if "gloo" in backend else "a gloo group beside it"
    return f"{backend}, {world_size()} rank(s); CPU values over {beside}"


def cpu_group() -> Any:
    """The group that carries CPU tensors: the default group when its backend is gloo (it may be
    "cpu:gloo,cuda:nccl"), else a gloo group over the same ranks, made on first use. Every rank
    must reach its first use at the same point of the program, as with any collective."""
    global _cpu_group
    world = dist.group.WORLD
    if _cpu_group is None or _cpu_group[0] is not world:
        group = None if "gloo" in str(dist.get_backend()) else dist.new_group(backend="gloo")
        _cpu_group = (world, group)
    return _cpu_group[1]


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over all ranks (a float64 all-reduce); every rank gets the sums."""
    if not active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=cpu_group())
    return dict(zip(keys, t.tolist()))


def any_over_ranks(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank."""
    return sum_over_ranks({"flag": float(flag)})["flag"] > 0


def all_finite(value: float) -> bool:
    """Whether `value` is finite on every rank: the answer every rank agrees on before it steps."""
    return not any_over_ranks(not math.isfinite(value))


def gather_over_ranks(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (picklable objects; every rank gets all)."""
    if not active():
        return list(items)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items, group=cpu_group())
    return [x for part in parts for x in part]


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel whenever a process group exists (one rank
    included: its gradients then go through the same all-reduce as on eight), else as it is."""
    if not active():
        return model
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device], output_device=device)
    return nn.parallel.DistributedDataParallel(model)


def start_process_group(backend: str, *, rank: int, world_size: int, address: str) -> None:
    """Join a process group outside Ray Train (`address` like 'tcp://127.0.0.1:29533'): for
    benchmarks and checks that run one process by hand."""
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world_size)


def end_process_group() -> None:
    """Leave the process group, if any (the gloo group beside it goes with it)."""
    global _cpu_group
    if active():
        dist.destroy_process_group()
    _cpu_group = None
