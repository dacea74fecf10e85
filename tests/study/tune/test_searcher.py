"""StudySearcher: trunks first, then branches by fork point; the LR from a list or per-cell Optuna."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import study_from_dict
from study.tune.searcher import StudySearcher

GRID = study_from_dict({
    "name": "s",
    "solver": {"ims_per_batch": 2, "unit_iters": 10, "drops_before_end": [4, 2], "warmup_iters": 1},
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 2, 3], "train_images": [8],
             "seeds": [0]},
    "lr": {"values": [0.01, 0.02]},
})
SEARCH = study_from_dict({
    "name": "s",
    "solver": {"ims_per_batch": 2, "unit_iters": 10, "drops_before_end": [4, 2], "warmup_iters": 1},
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 3], "train_images": [],
             "data_fraction": [0.5], "seeds": [0, 1]},
    "lr": {"low": 0.001, "high": 0.1, "samples": 2, "seed": 3},
})


def _drain(searcher: StudySearcher, complete: bool = False) -> list[dict]:
    out = []
    while True:
        trial_id = f"t{len(out)}"
        point = searcher.suggest(trial_id)
        if point == "FINISHED":
            return out
        assert isinstance(point, dict)
        out.append(point)
        if complete:
            searcher.on_trial_complete(trial_id, {"bbox_AP": point["lr"] * 100, "iteration": 1})


def test_grid_trunks_first_then_branches_in_fork_order() -> None:
    points = _drain(StudySearcher(GRID))
    assert len(points) == 2 * 2 * 3  # lineages (2 inits x 2 LRs) x schedules
    trunks, branches = points[:4], points[4:]
    assert all(p["schedule"] == 3 and p["fork_iter"] is None and p["fork_at"] == [6, 16] for p in trunks)
    assert {(p["init"], p["lr"]) for p in trunks} == {(i, lr) for i in ("scratch", "pretrained")
                                                     for lr in (0.01, 0.02)}
    assert [p["schedule"] for p in branches] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [p["fork_iter"] for p in branches] == [6] * 4 + [16] * 4  # each schedule's first drop
    assert all(p["trunk_schedule"] == 3 and p["fork_at"] == [] for p in branches)


def test_without_forking_every_schedule_runs_from_the_start() -> None:
    points = _drain(StudySearcher(GRID, forking=False))
    assert len(points) == 12 and all(p["fork_iter"] is None and p["fork_at"] == [] for p in points)


def test_optuna_proposes_samples_per_cell_in_range_and_learns() -> None:
    searcher = StudySearcher(SEARCH)
    points = _drain(searcher, complete=True)
    trunks = [p for p in points if p["schedule"] == 3]
    assert len(trunks) == 2 * 2 * 2 and len(points) == 16  # (2 inits x 2 seeds) x 2 samples, x 2 schedules
    assert all(0.001 <= p["lr"] <= 0.1 for p in points)
    by_group: dict[tuple, list[float]] = {}
    for p in trunks:
        by_group.setdefault((p["init"], p["size"], p["seed"]), []).append(p["lr"])
    assert all(len(lrs) == 2 and lrs[0] != lrs[1] for lrs in by_group.values())
    firsts = {lrs[0] for lrs in by_group.values()}
    assert len(firsts) == 1  # every cell's TPE starts from the same seeded draw
    told = searcher.told()  # what each cell's Optuna learnt from: its own two trunks, with their AP
    assert len(told) == 4 and all(
        [(lr, pytest.approx(lr * 100)) for lr in by_group[(init, size.label, seed)]] == results
        for (init, size, seed), results in told.items())
    branches = [p for p in points if p["schedule"] == 1]
    assert sorted(p["lr"] for p in branches) == sorted(p["lr"] for p in trunks)  # same LRs as trunks


def test_save_and_restore_continue_the_same_sequence(tmp_path: Path) -> None:
    a, b = StudySearcher(SEARCH), StudySearcher(SEARCH)
    for i in range(3):
        a.suggest(f"t{i}")
    a.save(str(tmp_path / "searcher.pkl"))
    b.restore(str(tmp_path / "searcher.pkl"))
    assert [a.suggest(f"u{i}") for i in range(4)] == [b.suggest(f"u{i}") for i in range(4)]

