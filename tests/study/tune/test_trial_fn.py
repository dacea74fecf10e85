"""A branch's start inside its Tune trial: it waits for the fork checkpoint, or says why it cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from study import layout
from study.config import StudyConfig, study_from_dict, to_dict
from study.plan.trials import Point, Trial
from study.train.loop import train_trial
from study.tune.storage import Store
from study.tune.trial_fn import seed_branch


def _trunk(tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> tuple[Path, Point]:
    cfg = study_from_dict({**to_dict(tiny_cfg), "grid": {**to_dict(tiny_cfg.grid), "schedule": [1, 2]}})
    trunk = dataclasses.replace(tiny_trial, schedule=2)
    local = tmp_path / "run" / layout.TRIALS
    train_trial(cfg, trunk, out_dir=local / trunk.name(), data_root=tmp_path, fork_at=[4])  # 1x leaves the 2x trunk at its first drop
    return local, Point(tiny_trial, trunk_schedule=2, fork_iter=4)


def test_a_branch_starts_from_its_trunk_and_a_restarted_one_does_not_wait(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    local, point = _trunk(tmp_path, tiny_cfg, tiny_trial)
    store, reported, synced = Store(tmp_path), [], []
    rows = seed_branch(store, "run", local, point, synced.append, reported.append)
    branch = local / tiny_trial.name()
    assert [r["iteration"] for r in rows] == [4] and reported == rows
    assert (branch / layout.CHECKPOINT).is_file() and (branch / layout.FORK_RECORD).is_file()
    assert not (local / point.trunk.name() / layout.fork_checkpoint(4)).exists()  # taken by the branch
    # restarted (a Tune retry, or --resume): the fork checkpoint is gone, its own copy is there
    again = seed_branch(store, "run", local, point, synced.append, reported.append)
    assert [r["iteration"] for r in again] == [4]


def test_a_branch_whose_fork_checkpoint_is_gone_says_so_instead_of_waiting(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    local, point = _trunk(tmp_path, tiny_cfg, tiny_trial)
    (local / point.trunk.name() / layout.fork_checkpoint(4)).unlink()
    with pytest.raises(RuntimeError, match=r"finished, but its fork checkpoint .*fork_4.pt is gone"):
        seed_branch(Store(tmp_path), "run", local, point, lambda _p: None, lambda _r: None)
