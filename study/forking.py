"""Branches of a lineage (see study/plan.py): start a shorter schedule from its trunk's fork checkpoint.

The trunk (`train_trial(..., fork_at=[...])`) writes `fork_<iteration>.pt` at each fork point. A
branch's folder then starts as if the branch had trained itself up to there: the fork checkpoint
becomes its `checkpoint.pt`, and the trunk's metric rows up to the fork point become the first
rows of its `metrics.jsonl`, relabelled with the branch's schedule, and `fork.json` records where
it came from. `train_trial` on that folder resumes from the checkpoint, so the stored results
look exactly like separate runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from study.trial import Trial, read_metrics, trial_row, write_metrics

TrunkState = Literal["ready", "diverged", "failed", "pending"]
FAILED_MARKER = "failed.txt"  # written by a trunk whose trial raised; holds the error


def fork_file(trunk_dir: str | Path, iteration: int) -> Path:
    return Path(trunk_dir) / f"fork_{iteration}.pt"


def trunk_state(trunk_dir: str | Path, fork_iter: int) -> TrunkState:
    """Whether a branch that leaves at `fork_iter` can start, and if not, why."""
    trunk_dir = Path(trunk_dir)
    if fork_file(trunk_dir, fork_iter).is_file():
        return "ready"
    rows = read_metrics(trunk_dir)
    if rows and rows[-1].get("status") == "diverged" and rows[-1]["iteration"] <= fork_iter:
        return "diverged"
    if (trunk_dir / FAILED_MARKER).is_file():
        return "failed"
    return "pending"


def shared_rows(trunk_dir: str | Path, fork_iter: int, branch: Trial) -> list[dict[str, Any]]:
    """The trunk's rows up to the fork point (or its divergence before it), as the branch's."""
    label = trial_row(branch)
    return [{**row, **label} for row in read_metrics(trunk_dir) if row["iteration"] <= fork_iter]


def start_branch(trunk_dir: str | Path, branch_dir: str | Path, fork_iter: int,
                 branch: Trial) -> list[dict[str, Any]]:
    """Seed `branch_dir` from the trunk; returns the shared rows. A branch folder that already has
    a checkpoint (a restarted branch) is left as it is."""
    branch_dir = Path(branch_dir)
    branch_dir.mkdir(parents=True, exist_ok=True)
    rows = shared_rows(trunk_dir, fork_iter, branch)
    if (branch_dir / "checkpoint.pt").is_file():
        return rows
    state = trunk_state(trunk_dir, fork_iter)
    if state not in ("ready", "diverged"):
        raise RuntimeError(f"branch {branch.name()} cannot start: its trunk {trunk_dir} is {state}")
    (branch_dir / "fork.json").write_text(json.dumps({"trunk": Path(trunk_dir).name,
                                                      "iteration": fork_iter, "trunk_state": state}))
    write_metrics(branch_dir, rows)
    if state == "ready":  # the checkpoint last: its presence means the folder is complete
        shutil.copyfile(fork_file(trunk_dir, fork_iter), branch_dir / "checkpoint.pt.tmp")
        os.replace(branch_dir / "checkpoint.pt.tmp", branch_dir / "checkpoint.pt")
    return rows
