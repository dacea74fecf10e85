"""A trial checkpoint: what it holds, and its size as `study plan` estimates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.weight_files import load_state_file
from study.config import StudyConfig
from study.plan.trials import Trial
from study.train.loop import train_trial
from study.train.state import checkpoint_bytes


def test_the_disk_estimate_matches_a_real_checkpoint(tmp_path: Path, tiny_cfg: StudyConfig,
                                                     tiny_trial: Trial) -> None:
    train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path, stop_at=4)
    real = (tmp_path / "t" / "checkpoint.pt").stat().st_size
    assert checkpoint_bytes(tiny_cfg) == pytest.approx(real, rel=0.01)  # within 1%: pickling overhead
    state = load_state_file(tmp_path / "t" / "checkpoint.pt")
    assert set(state) == {"model", "optimizer", "iteration", "counts", "rng", "cuda_rng", "window", "n_window"}
    assert state["iteration"] == 4 and state["counts"]["images"] == 4 * 4
    assert state["window"] == {} and state["n_window"] == 0  # taken by the evaluation at 4
    assert len(state["rng"]) == 1 and state["cuda_rng"] == []  # one CPU rank
