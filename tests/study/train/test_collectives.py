"""study.train.collectives: the identity without a process group; the same sums, gathers and
agreement under a real process group of one rank and of two (Ray Train's gloo group); a gloo group
beside a default group that cannot carry CPU tensors."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from study.train import collectives


def _values(rank: int, world_size: int) -> dict[str, Any]:
    """Rank `rank`'s share of fixed totals: whatever the world size, the sums are the same."""
    shares = [{"images": 10.0, "loss": 0.25, "pixels": 4096.0 * 3}, {"images": 6.0, "loss": 1.5, "pixels": 4096.0}]
    if world_size == 1:
        return {k: shares[0][k] + shares[1][k] for k in shares[0]}
    return shares[rank]


def _probe(world_size: int) -> dict[str, Any]:
    """What the collectives give on this rank, for values split over `world_size` ranks."""
    rank = collectives.rank()
    return {"rank": rank, "world_size": collectives.world_size(), "active": collectives.active(),
            "sums": collectives.sum_over_ranks(_values(rank, world_size)),
            "gathered": collectives.gather_over_ranks([f"item{i}" for i in range(rank * 2, rank * 2 + 2)]),
            "any_false": collectives.any_over_ranks(False), "any_rank1": collectives.any_over_ranks(rank == 1),
            "finite": collectives.all_finite(1.0), "nan_on_rank1": collectives.all_finite(math.nan if rank == 1 else 1.0)}


def collectives_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: probe the collectives, write what it got to `config['out']/rank<r>.pt`."""
    probe = _probe(int(config["world_size"]))
    torch.save(probe, Path(config["out"]) / f"rank{probe['rank']}.pt")


def test_without_a_process_group_every_collective_is_the_identity() -> None:
    assert not collectives.active()
    probe = _probe(1)
    assert probe["sums"] == _values(0, 1) and probe["gathered"] == ["item0", "item1"]
    assert (probe["world_size"], probe["rank"], probe["any_false"], probe["finite"]) == (1, 0, False, True)
    assert not collectives.all_finite(math.inf) and collectives.any_over_ranks(True)
    model = torch.nn.Linear(2, 2)
    assert collectives.data_parallel(model, torch.device("cpu")) is model


@pytest.mark.slow
def test_the_collectives_give_the_same_sums_in_process_groups_of_one_and_two(tmp_path: Path) -> None:
    """Ray Train's own process group (gloo), one worker and two: the same sums; the gather in rank
    order; any rank's flag and any rank's NaN reach every rank."""
    import ray

    from study.tune.launch import fit_torch, start_ray

    start_ray(cpus=2, dashboard=False)
    try:
        for n in (1, 2):
            (tmp_path / str(n)).mkdir()
            fit_torch(collectives_worker, {"out": str(tmp_path / str(n)), "world_size": n}, name=f"probe{n}",
                      storage_path=str(tmp_path / "ray"), workers=n)
    finally:
        ray.shutdown()
    one = torch.load(tmp_path / "1" / "rank0.pt", weights_only=True)
    two = [torch.load(tmp_path / "2" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert one["active"] and one["world_size"] == 1  # Ray Train makes a group for one worker too
    assert one["sums"] == two[0]["sums"] == two[1]["sums"] == {"images": 16.0, "loss": 1.75, "pixels": 16384.0}
    assert one["gathered"] == ["item0", "item1"]
    assert two[0]["gathered"] == two[1]["gathered"] == ["item0", "item1", "item2", "item3"]
    assert [p["world_size"] for p in two] == [2, 2] and [p["rank"] for p in two] == [0, 1]
    assert not one["any_rank1"] and all(p["any_rank1"] for p in two)  # rank 1's flag reaches rank 0
    assert one["nan_on_rank1"] and not any(p["nan_on_rank1"] for p in two)  # rank 1's NaN stops rank 0 too
    assert all(p["finite"] and not p["any_false"] for p in [one, *two])


def test_cpu_values_travel_over_a_gloo_group_beside_a_default_group_that_is_not_gloo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under NCCL (no CPU tensors) the collectives make a gloo group over the same ranks, once, and
    sum through it; under gloo they use the default group. Shown with a gloo group of one process
    whose backend is reported as 'nccl'."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collectives.start_process_group("gloo", rank=0, world_size=1, address=f"tcp://127.0.0.1:{port}")
    try:
        assert collectives.cpu_group() is None  # gloo: the default group carries CPU tensors
        collectives.end_process_group()
        collectives.start_process_group("gloo", rank=0, world_size=1, address=f"tcp://127.0.0.1:{port}")
        made: list[str] = []
        new_group = dist.new_group
        monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
        monkeypatch.setattr(dist, "new_group", lambda **kw: made.append(kw["backend"]) or new_group(**kw))
        group = collectives.cpu_group()
        assert group is not None and made == ["gloo"]
        assert collectives.sum_over_ranks({"a": 2.5}) == {"a": 2.5} and collectives.gather_over_ranks([1]) == [1]
        assert collectives.cpu_group() is group and made == ["gloo"]  # made once
    finally:
        collectives.end_process_group()
    assert not collectives.active() and collectives.sum_over_ranks({"a": 1.0}) == {"a": 1.0}
