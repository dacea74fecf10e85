"""A branch started from its trunk's fork checkpoint equals the same schedule trained on its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from study.config import StudyConfig, study_from_dict, to_dict
from study.layout import read_metrics
from study.plan.trials import Trial
from study.train.loop import TIMING_COLUMNS, train_trial
from study.tune.forking import start_branch, trunk_state

TIMING = TIMING_COLUMNS


@pytest.fixture
def cfg(tiny_cfg: StudyConfig) -> StudyConfig:
    """1x = 8 iterations, drops 4 and 2 before the end: 1x leaves the 2x trunk at iteration 4,
    which is not an evaluation point (every 3), so the loss window must travel with the fork
    checkpoint."""
    return study_from_dict({**to_dict(tiny_cfg), "name": "fork_smoke",
                            "solver": {**to_dict(tiny_cfg.solver), "ims_per_batch": 2, "eval_period": 3},
                            "grid": {**to_dict(tiny_cfg.grid), "schedule": [1, 2]}})


@pytest.mark.slow
def test_a_branch_equals_a_separate_run(tmp_path: Path, cfg: StudyConfig, tiny_trial: Trial) -> None:
    ONE, TWO = tiny_trial, dataclasses.replace(tiny_trial, schedule=2)
    separate = read_metrics(_run(cfg, tmp_path / "separate", ONE, tmp_path))
    assert trunk_state(tmp_path / "trunk", 4) == "pending"
    train_trial(cfg, TWO, out_dir=tmp_path / "trunk", data_root=tmp_path, fork_at=[4])
    assert trunk_state(tmp_path / "trunk", 4) == "ready"
    shared = start_branch(tmp_path / "trunk", tmp_path / "branch", 4, ONE)
    assert [r["iteration"] for r in shared] == [3] and shared[0]["schedule"] == 1
    branch = read_metrics(_run(cfg, tmp_path / "branch", ONE, tmp_path))
    assert [r["iteration"] for r in branch] == [r["iteration"] for r in separate] == [3, 6, 8]
    for got, want in zip(branch, separate):
        assert set(got) == set(want)
        for key in set(want) - TIMING:
            if isinstance(want[key], float):
                assert got[key] == pytest.approx(want[key], abs=1e-5, nan_ok=True), (got["iteration"], key)
            else:
                assert got[key] == want[key], (got["iteration"], key)
    assert branch[-1]["status"] == "finished" and branch[-1]["images_seen"] == 8 * 2


def test_a_branch_of_a_diverged_trunk_is_diverged(tmp_path: Path, cfg: StudyConfig, tiny_trial: Trial) -> None:
    wild = dataclasses.replace(tiny_trial, schedule=2, base_lr=1e6)
    row = train_trial(cfg, wild, out_dir=tmp_path / "trunk", data_root=tmp_path, fork_at=[4])
    assert row["status"] == "diverged" and row["iteration"] <= 4
    assert trunk_state(tmp_path / "trunk", 4) == "diverged"
    rows = start_branch(tmp_path / "trunk", tmp_path / "branch", 4,
                        dataclasses.replace(tiny_trial, base_lr=1e6))
    assert rows[-1]["status"] == "diverged" and rows[-1]["schedule"] == 1
    assert not (tmp_path / "branch" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "branch" / "metrics.jsonl").read_text().splitlines()[-1]) == rows[-1]


def _run(cfg: StudyConfig, out: Path, trial: Trial, root: Path) -> Path:
    train_trial(cfg, trial, out_dir=out, data_root=root)
    return out


def test_a_fork_point_is_written_before_the_checkpoint_of_its_iteration(tmp_path: Path, cfg: StudyConfig,
                                                                         tiny_trial: Trial) -> None:
    """At an iteration that is both an evaluation and a fork point, the order is: metric row, fork
    checkpoint, checkpoint. A run killed after the checkpoint resumes past the fork point; had the
    fork checkpoint come second, a kill between the two would leave its branch waiting forever."""
    written: list[str] = []
    trunk = dataclasses.replace(tiny_trial, schedule=2)  # 2x: 16 iterations, evaluations every 3
    train_trial(cfg, trunk, out_dir=tmp_path / "trunk", data_root=tmp_path, fork_at=[6], stop_at=6,
                sync=lambda path: written.append(path.name))
    assert written == ["metrics.jsonl", "checkpoint.pt", "checksums.json", "metrics.jsonl", "fork_6.pt",
                       "checksums.json", "checkpoint.prev.pt", "checkpoint.pt", "checksums.json"]


def test_a_finished_trunk_without_its_fork_checkpoint_is_lost_not_pending(tmp_path: Path, cfg: StudyConfig,
                                                                           tiny_trial: Trial) -> None:
    trunk = tmp_path / "trunk"
    train_trial(cfg, dataclasses.replace(tiny_trial, schedule=2), out_dir=trunk, data_root=tmp_path, fork_at=[4])
    assert trunk_state(trunk, 4) == "ready"
    (trunk / "fork_4.pt").unlink()  # taken by a branch that started, or never finished writing
    assert trunk_state(trunk, 4) == "lost"
    assert trunk_state(tmp_path / "nothing_yet", 4) == "pending"


def test_a_damaged_fork_checkpoint_is_refused_by_its_branch(tmp_path: Path, cfg: StudyConfig,
                                                            tiny_trial: Trial) -> None:
    trunk = tmp_path / "trunk"
    train_trial(cfg, dataclasses.replace(tiny_trial, schedule=2), out_dir=trunk, data_root=tmp_path,
                fork_at=[4], stop_at=6)
    fork = trunk / "fork_4.pt"
    fork.write_bytes(fork.read_bytes()[:1000])  # cut short
    assert trunk_state(trunk, 4) == "damaged"
    with pytest.raises(RuntimeError, match="trunk .* is damaged"):
        start_branch(trunk, tmp_path / "branch", 4, tiny_trial)
    assert not (tmp_path / "branch" / "checkpoint.pt").exists()
    records = json.loads((trunk / "checksums.json").read_text())
    del records["fork_4.pt"]
    (trunk / "checksums.json").write_text(json.dumps(records))  # a copy pulled before its record
    assert trunk_state(trunk, 4) == "pending"
