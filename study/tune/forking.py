"""Branches of a lineage (see `study.plan.trials`): start a shorter schedule from its trunk's fork checkpoint.

The trunk (`train_trial(..., fork_at=[...])`) writes a fork checkpoint at each fork point. A
branch's folder then starts as if the branch had trained itself up to there: the fork checkpoint
becomes its checkpoint, the trunk's metric rows up to the fork point become the first rows of its
metric log, relabelled with the branch's schedule, and its fork record says where it came from.
`train_trial` on that folder resumes from the checkpoint, so the stored results look exactly
like separate runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from study import layout
from study.plan.trials import Trial

TrunkState = Literal["ready", "diverged", "failed", "lost", "damaged", "pending"]


def fork_file(trunk_dir: str | Path, iteration: int) -> Path:
    return Path(trunk_dir) / layout.fork_checkpoint(iteration)


def trunk_state(trunk_dir: str | Path, fork_iter: int) -> TrunkState:
    """Whether a branch that leaves at `fork_iter` can start, and if not, why: the trunk is still
    'pending', it 'diverged' before the fork point, it 'failed', it finished and the fork
    checkpoint was 'lost' (a branch that starts deletes the checkpoint it copied), or the fork
    checkpoint is 'damaged' (not the bytes recorded when it was written). A fork checkpoint not
    yet in the trunk's checksums (a copy pulled between the two) is 'pending'."""
    trunk_dir = Path(trunk_dir)
    fork = fork_file(trunk_dir, fork_iter)
    if fork.is_file():
        if layout.check_checkpoint(fork).intact:
            return "ready"
        if fork.name in layout.read_checksums(trunk_dir):
            return "damaged"
    rows = layout.read_metrics(trunk_dir)
    if rows and rows[-1].get("status") == "diverged" and rows[-1]["iteration"] <= fork_iter:
        return "diverged"
    if (trunk_dir / layout.FAILED).is_file():
        return "failed"
    if rows and rows[-1].get("status") == "finished":  # its fork points lie before its end
        return "lost"
    return "pending"


def has_own_state(branch_dir: str | Path) -> bool:
    """Whether a branch's folder holds a checkpoint of its own (the latest, or the one before it,
    between the two renames of a checkpoint's rotation): then it already took its fork point."""
    return any((Path(branch_dir) / name).is_file() for name in (layout.CHECKPOINT, layout.PREVIOUS_CHECKPOINT))


def shared_rows(trunk_dir: str | Path, fork_iter: int, branch: Trial) -> list[dict[str, Any]]:
    """The trunk's rows up to the fork point (or its divergence before it), as the branch's."""
    label = branch.columns()
    return [{**row, **label} for row in layout.read_metrics(trunk_dir) if row["iteration"] <= fork_iter]


def start_branch(trunk_dir: str | Path, branch_dir: str | Path, fork_iter: int,
                 branch: Trial) -> list[dict[str, Any]]:
    """Seed `branch_dir` from the trunk; returns the shared rows. A branch folder that already has
    a checkpoint (a restarted branch) is left as it is."""
    branch_dir = Path(branch_dir)
    branch_dir.mkdir(parents=True, exist_ok=True)
    rows = shared_rows(trunk_dir, fork_iter, branch)
    if has_own_state(branch_dir):
        return rows
    state = trunk_state(trunk_dir, fork_iter)
    if state not in ("ready", "diverged"):
        raise RuntimeError(f"branch {branch.name()} cannot start: its trunk {trunk_dir} is {state}")
    (branch_dir / layout.FORK_RECORD).write_text(json.dumps({"trunk": Path(trunk_dir).name,
                                                             "iteration": fork_iter, "trunk_state": state}))
    layout.write_metrics(branch_dir, rows)
    if state == "ready":  # the checkpoint last: its presence means the folder is complete
        layout.write_checkpoint(branch_dir / layout.CHECKPOINT,
                                lambda tmp: shutil.copyfile(fork_file(trunk_dir, fork_iter), tmp), fork_iter)
    return rows
