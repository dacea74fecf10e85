"""A branch started from its trunk's fork checkpoint equals the same schedule trained on its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from study.config import study_from_dict, to_dict
from study.forking import start_branch, trunk_state
from study.trial import TIMING_COLUMNS, Trial, read_metrics, train_trial
from tests.study.test_trial import SMOKE, TRIAL

# 1x = 8 iterations, drops 4 and 2 before the end: 1x leaves the 2x trunk at iteration 4, which is
# not an evaluation point (every 3), so the loss window must travel with the fork checkpoint.
CFG = study_from_dict({**to_dict(SMOKE), "name": "fork_smoke",
                       "solver": {**to_dict(SMOKE.solver), "ims_per_batch": 2, "eval_period": 3},
                       "grid": {**to_dict(SMOKE.grid), "schedule": [1, 2]}})
ONE = dataclasses.replace(TRIAL, schedule=1)
TWO = dataclasses.replace(ONE, schedule=2)
TIMING = TIMING_COLUMNS


def test_a_branch_equals_a_separate_run(tmp_path: Path) -> None:
    separate = read_metrics(_run(tmp_path / "separate", ONE, tmp_path))
    assert trunk_state(tmp_path / "trunk", 4) == "pending"
    train_trial(CFG, TWO, out_dir=tmp_path / "trunk", data_root=tmp_path, fork_at=[4])
    assert trunk_state(tmp_path / "trunk", 4) == "ready"
    shared = start_branch(tmp_path / "trunk", tmp_path / "branch", 4, ONE)
    assert [r["iteration"] for r in shared] == [3] and shared[0]["schedule"] == 1
    branch = read_metrics(_run(tmp_path / "branch", ONE, tmp_path))
    assert [r["iteration"] for r in branch] == [r["iteration"] for r in separate] == [3, 6, 8]
    for got, want in zip(branch, separate):
        assert set(got) == set(want)
        for key in set(want) - TIMING:
            if isinstance(want[key], float):
                assert got[key] == pytest.approx(want[key], abs=1e-5, nan_ok=True), (got["iteration"], key)
            else:
                assert got[key] == want[key], (got["iteration"], key)
    assert branch[-1]["status"] == "finished" and branch[-1]["images_seen"] == 8 * 2


def test_a_branch_of_a_diverged_trunk_is_diverged(tmp_path: Path) -> None:
    wild = dataclasses.replace(TWO, base_lr=1e6)
    row = train_trial(CFG, wild, out_dir=tmp_path / "trunk", data_root=tmp_path, fork_at=[4])
    assert row["status"] == "diverged" and row["iteration"] <= 4
    assert trunk_state(tmp_path / "trunk", 4) == "diverged"
    rows = start_branch(tmp_path / "trunk", tmp_path / "branch", 4,
                        dataclasses.replace(ONE, base_lr=1e6))
    assert rows[-1]["status"] == "diverged" and rows[-1]["schedule"] == 1
    assert not (tmp_path / "branch" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "branch" / "metrics.jsonl").read_text().splitlines()[-1]) == rows[-1]


def _run(out: Path, trial: Trial, root: Path) -> Path:
    train_trial(CFG, trial, out_dir=out, data_root=root)
    return out
