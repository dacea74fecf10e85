"""The run folder's schema: every file name a study writes, and the helpers that write them.

    <storage>/                       --storage: a folder, or a URI every node reaches
      data/                          the synthetic detection set (made once, cached)
      pretrained/                    cached `study pretrain` checkpoints (pretrain-<...>.pt)
      <name>/                        one study run
        study.yaml                   the resolved config it was started with
        run.json                     hardware, start, end, seconds per phase (`RunInfo`)
        optuna.journal               the LR search's Optuna studies, one per (init, size, seed) group
        halving.json                 successive halving's decisions: who was dropped, where
        .lock | lock.json            held while a `study run` writes it (flock; a lease on URIs)
        trials/<trial>/              one study trial (a halving trunk: one Tune trial per segment)
          metrics.jsonl              one JSON row per evaluation (append-only, fsync'ed)
          checkpoint.pt              the last evaluation's full training state
          fork_<iteration>.pt        a trunk's state where a shorter schedule leaves it
          fork.json                  a branch's record of the trunk it started from
          failed.txt                 the traceback of a trial whose process raised
        tune/                        Tune's experiment (restore state, result files, TensorBoard)
        train_runs/                  Ray Train's checkpoints of multi-worker trials
        report/                      `study analyze`'s output

No other module spells these names; a test checks that. Plain files and the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# <storage>/
DATA = "data"
PRETRAINED = "pretrained"
# <storage>/<name>/
STUDY_FILE = "study.yaml"
RUN_INFO = "run.json"
OPTUNA_JOURNAL = "optuna.journal"
HALVING = "halving.json"
LOCK = ".lock"
LEASE = "lock.json"
TRIALS = "trials"
TUNE = "tune"
TRAIN_RUNS = "train_runs"
REPORT = "report"
# <storage>/<name>/trials/<trial>/
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FORK_RECORD = "fork.json"
FAILED = "failed.txt"
RESUME_FILES = (METRICS, CHECKPOINT, FORK_RECORD)  # what a trial needs to resume on another node
RESULT_FILES = (METRICS, FORK_RECORD, FAILED)  # what the analysis reads (no checkpoints)

# Ray Train keeps this many checkpoints of a multi-worker trial under train_runs/ (the disk
# estimate of `study plan` counts them).
TRAIN_CHECKPOINTS_KEPT = 2


def fork_checkpoint(iteration: int) -> str:
    """The name of a trunk's fork checkpoint at `iteration`."""
    return f"fork_{iteration}.pt"


def trial_path(name: str, trial: str = "", file: str = "") -> str:
    """`<name>/trials[/<trial>[/<file>]]`, '/'-separated, relative to the storage root."""
    return "/".join(p for p in (name, TRIALS, trial, file) if p)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then rename it over `path`: a reader (or a
    crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------------------------------
# The metric log of one trial
# --------------------------------------------------------------------------------------------------


def read_metrics(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `trial_dir`'s metric log, oldest first ([] if it has none)."""
    path = Path(trial_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def append_metrics(trial_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row, flushed to disk before returning (the log survives a crash right after)."""
    path = Path(trial_dir) / METRICS
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def write_metrics(trial_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Replace the metric log with `rows`, atomically."""
    return atomic_write_text(Path(trial_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def truncate_metrics(trial_dir: str | Path, iteration: int) -> bool:
    """Drop the rows past `iteration` (the checkpoint a run resumes from); True if any were."""
    rows = read_metrics(trial_dir)
    kept = [r for r in rows if r["iteration"] <= iteration]
    if len(kept) == len(rows):
        return False
    write_metrics(trial_dir, kept)
    return True


# --------------------------------------------------------------------------------------------------
# run.json
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What `study run` records about itself in `run.json`: the report's "Run" section."""

    started: str  # ISO time
    finished: str
    seconds: float
    phases_s: dict[str, float] = field(default_factory=dict)  # checks_and_data, pretraining, ...
    machine: dict[str, Any] = field(default_factory=dict)  # host, platform, cpus, torch, gpus

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        return cls(**json.loads(text))


def read_run_info(run_dir: str | Path) -> RunInfo | None:
    path = Path(run_dir) / RUN_INFO
    return RunInfo.from_json(path.read_text()) if path.is_file() else None
