"""Successive halving's pure parts: the stages over the schedules, survivors, the ranking."""

from __future__ import annotations

import math

import pytest

from study.config import SolverConfig
from study.plan.halving import Decision, Stage, halving_iterations, rank, stages, survivor_counts, survivors

PAPER_SOLVER = SolverConfig(unit_iters=90_000, drops_before_end=(60_000, 20_000), warmup_iters=500)


def test_the_stages_of_the_papers_schedules() -> None:
    got = stages([1, 2, 3, 4, 5, 6], PAPER_SOLVER)
    assert got[0] == Stage(1.0, 0, 30_000, 90_000, last=False)
    assert got[1] == Stage(2.0, 30_000, 120_000, 180_000, last=False)
    assert got[-1] == Stage(6.0, 390_000, 540_000, 540_000, last=True)
    assert [s.iterations for s in got] == [90_000] + [150_000] * 5
    assert stages([3], PAPER_SOLVER) == [Stage(3.0, 0, 270_000, 270_000, last=True)]


def test_survivors_round_up_and_keep_one() -> None:
    assert [survivors(m, 0.5) for m in (1, 2, 3, 4, 5, 8)] == [1, 1, 2, 2, 3, 4]
    assert survivors(10, 0.3) == 3 and survivors(3, 0.1) == 1
    assert survivor_counts(8, 0.5, 5) == [8, 4, 2, 1, 1]


def test_halving_iterations_sum_the_stages() -> None:
    assert halving_iterations(4, 0.5, [1, 2, 3, 4, 5, 6], PAPER_SOLVER) == 4 * 90_000 + 2 * 150_000 + 4 * 150_000
    # one candidate: halving trains exactly what forking trains (540k trunk + 5 x 60k tails)
    assert halving_iterations(1, 0.5, [1, 2, 3, 4, 5, 6], PAPER_SOLVER) == 840_000


def test_rank_keeps_the_best_and_never_one_without_an_ap() -> None:
    ranked, kept = rank({0.01: 30.0, 0.02: 35.0, 0.04: None, 0.08: float("nan")}, 0.5)
    assert kept == [0.02, 0.01]
    assert ranked[:2] == [(0.02, 35.0), (0.01, 30.0)] and {lr for lr, _ in ranked[2:]} == {0.04, 0.08}
    assert rank({0.01: 30.0, 0.02: 30.0, 0.04: 30.0}, 0.5)[1] == [0.01, 0.02]  # ties: the smaller LR
    assert rank({0.01: None, 0.02: float("nan")}, 0.5)[1] == []
    _, kept = rank({0.01: None, 0.02: 20.0, 0.04: None, 0.08: None}, 0.75)  # 3 may go on; 1 has an AP
    assert kept == [0.02]


def test_a_decision_round_trips_through_json() -> None:
    import json

    d = Decision(init="scratch", size="1000", seed=2, schedule=1.0, ranked=((0.02, 35.5), (0.04, None)),
                 kept=(0.02,), dropped=(0.04,))
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert math.isclose(d.ranked[0][1] or 0, 35.5)
    with pytest.raises(KeyError):
        Decision.from_dict({"init": "scratch"})
