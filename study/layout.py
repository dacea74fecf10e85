"""The run folder's schema: every file name a study writes, and the helpers that write them.

    <storage>/                       --storage: a folder, or a URI every node reaches
      data/                          the synthetic detection set (made once, cached)
      pretrained/                    cached `study pretrain` checkpoints (pretrain-<...>.pt)
        train_runs/                  Ray Train's runs of pre-training jobs (several workers, or GPUs)
      <name>/                        one study run
        study.yaml                   the resolved config it was started with
        run.json                     hardware, start, end, seconds per phase (`RunInfo`)
        optuna.journal               the LR search's Optuna studies, one per (init, size, seed) group
        halving.json                 successive halving's decisions: who was dropped, where
        .lock | lock.json            held while a `study run` writes it (flock; a lease on URIs)
        trials/<trial>/              one study trial (a halving trunk: one Tune trial per segment)
          metrics.jsonl              one JSON row per evaluation (append-only, fsync'ed)
          checkpoint.pt              the last evaluation's full training state
          checkpoint.prev.pt         the one before it, kept while the trial runs (a fallback)
          checksums.json             size and SHA-256 of each checkpoint, recorded when written
          fork_<iteration>.pt        a trunk's state where a shorter schedule leaves it
          fork.json                  a branch's record of the trunk it started from
          failed.txt                 the traceback of a trial whose process raised
          attempt.json               the token of the attempt that may write here (the latest)
        tune/                        Tune's experiment (restore state, result files, TensorBoard)
        train_runs/                  Ray Train's checkpoints of multi-worker trials
        report/                      `study analyze`'s output

No other module spells these names; a test checks that. Plain files and the standard library only.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

def is_uri(location: str | Path) -> bool:
    """Whether a location (a storage, a data path, weights) is a URI (`s3://...`), not a local path."""
    return "://" in str(location)


# <storage>/
DATA = "data"
PRETRAINED = "pretrained"
# a node's own folder (storage given as a URI): inputs pulled from URIs, one folder per input
INPUTS = "inputs"
PULLED = "complete.json"  # what was pulled, written last
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
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
CHECKSUMS = "checksums.json"
FORK_RECORD = "fork.json"
FAILED = "failed.txt"
ATTEMPT = "attempt.json"
# what a trial needs to resume on another node
RESUME_FILES = (METRICS, CHECKSUMS, CHECKPOINT, PREVIOUS_CHECKPOINT, FORK_RECORD)
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


CONTINUE = "continue: `study run` with --resume, or `study trial` again (it resumes by itself)"


class DiskFull(OSError):
    """No space left on the device while writing a file of the study; says which, and what is intact."""


def _no_space(path: Path) -> DiskFull:
    return DiskFull(errno.ENOSPC, f"no space left on the device while writing {path}; the file it "
                                  f"replaces is intact: free some space, then {CONTINUE}")


def move(src: str | Path, dest: str | Path) -> None:
    """Rename `src` over `dest` in one step (the one rename every writer here goes through)."""
    os.replace(src, dest)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` to a temporary file beside `path`, flushed to disk, then renamed over `path`:
    a reader (or a crash, or a full disk) leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        # torch.save reports a full disk as a RuntimeError: look at the disk, not the error's type
        full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or shutil.disk_usage(path.parent).free < 1 << 20
        tmp.unlink(missing_ok=True)
        if full and isinstance(e, Exception):
            raise _no_space(path) from e
        raise
    move(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------------------------------
# The metric log of one trial
# --------------------------------------------------------------------------------------------------


Status = Literal["running", "finished", "diverged", "training", "paused"]
STATUSES: tuple[Status, ...] = typing.get_args(Status)
LOGGED: tuple[Status, ...] = ("running", "finished", "diverged")  # written to the log; the others go to Tune only


@dataclass(frozen=True)
class MetricRow:
    """One result of a trial: an evaluation ('running', or 'finished' at the schedule's end) or a
    divergence ('diverged'), which the metric log keeps; a progress report between evaluations
    ('training') or a paused segment's end ('paused'), which only Tune sees. `as_dict` is the row
    as the log and Tune hold it, every group's columns side by side."""

    iteration: int
    status: Status
    trial: Mapping[str, Any]  # Trial.columns(): init, schedule, train_images, base_lr, seed, ...
    lr: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)  # loss, loss_classifier, ...
    metrics: Mapping[str, float] = field(default_factory=dict)  # bbox_AP, segm_AP, ..., eval_s
    images_per_s: float | None = None
    seen: Mapping[str, int] = field(default_factory=dict)  # images_seen, ..., pretrain_pixels_seen

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"iteration": self.iteration, "status": self.status}
        if self.lr is not None:
            row["lr"] = self.lr
        row |= {**self.trial, **self.losses, **self.metrics}
        if self.images_per_s is not None:
            row["images_per_s"] = self.images_per_s
        return row | dict(self.seen)


class CorruptFile(ValueError):
    """A file of the study whose content is not what was written; the message names it."""


def read_metrics(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `trial_dir`'s metric log, oldest first ([] if it has none). A last line cut
    short (a crash or a full disk while it was appended: no newline, or not JSON) is left out;
    a bad line before the last one is corruption, not a torn append: CorruptFile, naming it."""
    return _parse_metrics(Path(trial_dir) / METRICS)[0]


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(the rows, whether a torn last line was left out)."""
    if not path.is_file():
        return [], False
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # `tail` is what follows the last newline
    rows = []
    for number, line in enumerate(complete, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(complete) and not tail:
                return rows, True  # a torn last row that got its newline but not all its bytes
            raise CorruptFile(f"{path}, line {number} of {len(complete)}: not a JSON row ({line[:80]!r}); "
                              "the log is damaged before its last line: restore it or delete the trial") from None
    return rows, bool(tail)


def append_metrics(trial_dir: str | Path, row: dict[str, Any]) -> Path:
    """Append one row (`MetricRow.as_dict()` of a logged status), flushed to disk before returning
    (the log survives a crash right after)."""
    if row.get("status") not in LOGGED:
        raise ValueError(f"a {row.get('status')!r} row is not logged (the log holds {', '.join(LOGGED)})")
    path = Path(trial_dir) / METRICS
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(errno.ENOSPC, f"no space left on the device while appending iteration "
                                         f"{row.get('iteration')} to {path}; a partly written last row is "
                                         f"dropped on resume: free some space, then {CONTINUE}") from e
        raise
    return path


def write_metrics(trial_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Replace the metric log with `rows`, atomically."""
    return atomic_write_text(Path(trial_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def truncate_metrics(trial_dir: str | Path, iteration: int) -> bool:
    """Drop the rows past `iteration` (the checkpoint a run resumes from) and a torn last line;
    True if the log was rewritten."""
    path = Path(trial_dir) / METRICS
    rows, torn = _parse_metrics(path)
    kept = [r for r in rows if r["iteration"] <= iteration]
    if len(kept) == len(rows) and not torn:
        return False
    if torn:
        print(f"{path}: its last line was cut short (written as the trial stopped); dropped", flush=True)
    write_metrics(trial_dir, kept)
    return True


# --------------------------------------------------------------------------------------------------
# Checkpoints, with their size and SHA-256 recorded when written
# --------------------------------------------------------------------------------------------------


def file_record(path: str | Path, iteration: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"iteration": iteration, "bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def read_checksums(folder: str | Path) -> dict[str, dict[str, Any]]:
    """`folder`'s checksums.json: {file name: {iteration, bytes, sha256}} ({} if none or unreadable)."""
    path = Path(folder) / CHECKSUMS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def write_checkpoint(path: str | Path, write: Callable[[Path], Any], iteration: int, *,
                     keep_previous: bool = False, sync: Callable[[Path], None] = lambda _p: None) -> Path:
    """Write a checkpoint atomically (`write(tmp)`), record its size and SHA-256 in the folder's
    checksums.json, and `sync` each file changed. With `keep_previous` the file it replaces
    becomes checkpoint.prev.pt, the fallback if the new one is ever found damaged."""
    path = Path(path)
    folder = path.parent
    records = read_checksums(folder)
    tmp = path.with_name(path.name + ".new")
    try:
        atomic_write(tmp, write)  # complete and on disk before anything is renamed
    except DiskFull as e:
        raise DiskFull(errno.ENOSPC, f"no space left on the device while writing {path} (iteration {iteration}); "
                                     f"the checkpoints before it are intact: free some space, then {CONTINUE}") from e
    record = file_record(tmp, iteration)
    if keep_previous and path.is_file():
        previous = folder / PREVIOUS_CHECKPOINT
        move(path, previous)
        if path.name in records:
            records[previous.name] = records[path.name]
        sync(previous)
    move(tmp, path)
    records[path.name] = record
    sync(path)
    write_checksums(folder, records, sync)
    return path


def write_checksums(folder: Path, records: dict[str, dict[str, Any]], sync: Callable[[Path], None]) -> None:
    """Replace checksums.json with the `records` of the files that exist, and `sync` it."""
    present = {name: rec for name, rec in records.items() if (folder / name).is_file()}
    sync(atomic_write_text(folder / CHECKSUMS, json.dumps(present, indent=1, sort_keys=True)))


@dataclass(frozen=True)
class CheckpointCheck:
    """What `check_checkpoint` found: the checkpoint's iteration when its bytes are those recorded
    when it was written; else `problem` says why not (None with no iteration: no such file)."""

    iteration: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.iteration is not None

    @property
    def missing(self) -> bool:
        return self.iteration is None and self.problem is None


def check_checkpoint(path: str | Path, records: dict[str, dict[str, Any]] | None = None) -> CheckpointCheck:
    """Whether the checkpoint `path` holds the bytes recorded when it was written (any record in
    `records`, default its folder's checksums.json: a renamed file matches its record)."""
    path = Path(path)
    if not path.is_file():
        return CheckpointCheck()
    records = read_checksums(path.parent) if records is None else records
    size = path.stat().st_size
    if any(r["bytes"] == size for r in records.values()):
        digest = file_record(path, 0)["sha256"]
        for r in records.values():
            if r["bytes"] == size and r["sha256"] == digest:
                return CheckpointCheck(iteration=int(r["iteration"]))
    own = records.get(path.name)
    if own is None:
        return CheckpointCheck(problem="no size or checksum was recorded for it (a crash while it was written?)")
    if own["bytes"] != size:
        return CheckpointCheck(problem=f"truncated or padded: {size:,} bytes, {own['bytes']:,} when written")
    return CheckpointCheck(problem="its bytes differ from those written (SHA-256 mismatch)")


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
