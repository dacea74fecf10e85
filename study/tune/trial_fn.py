"""One Tune trial of the study: `study_trial(config, setup)`, where Tune's `config` is a `Point`.

- A branch (a shorter schedule, with forking on) waits for its trunk's fork checkpoint, seeds its
  folder from it (`study.tune.forking`) and reports the shared rows to Tune first.
- With one worker and no GPU the trial trains in the Tune trial's own process (a Ray Train
  worker group would add ~10 s per trial and nothing else); with more workers, or GPUs, it is a
  Ray Train data-parallel job (`study.tune.jobs`) inside the function trainable, its reports
  forwarded to Tune by `TuneReportCallback`: a one-GPU trial runs the process group, DDP and
  collectives of an eight-GPU one.
- A halving trunk trains in segments (`Point.start_at` .. `Point.stop_at`), one Tune trial each,
  all in the trial's one folder: a segment pauses with a checkpoint, the next resumes from it.
- On shared storage (a URI) the trial works in a fresh local folder: it pulls its own files
  first (so it resumes on whichever node it lands) and pushes each file it writes.
- Each attempt (a Tune retry is a new one) takes the trial folder's token first
  (`study.tune.attempt`): an older attempt still running somewhere is refused its next write.
- A trial that raises leaves the failure marker with its traceback, which tells waiting branches.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study import layout
from study.config import StudyConfig
from study.errors import StaleAttempt
from study.plan.trials import Point, Trial
from study.train.loop import Fence, Sync, train_trial
from study.tune.attempt import Attempt
from study.tune.forking import fork_file, has_own_state, start_branch, trunk_state
from study.tune.launch import tune_row
from study.tune.inputs import localized
from study.tune.storage import Store, node_dir, pull_files, pusher

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class StudySetup:
    """What every trial of a study shares (given to Tune once, with `tune.with_parameters`)."""

    study: StudyConfig
    storage: str  # the store's location (`Store.uri()`)
    name: str  # the run's folder in it
    data_root: str | None  # None: each node's own (a URI store)
    pretrained_weights: str | None
    weights_in_store: bool  # `pretrained_weights` is a path in the store, to pull


def study_trial(config: dict[str, Any], setup: StudySetup) -> None:
    """One Tune trial (see the module docstring)."""
    point = Point.from_config(config)
    run_attempt(setup, point, report=lambda row: _to_tune(point.trial, row))


def run_attempt(setup: StudySetup, point: Point, *, report: Report) -> None:
    """One attempt of the trial `point`, its rows to `report` (Tune's, inside `study_trial`)."""
    trial = point.trial
    store = Store(setup.storage)
    attempt = Attempt.take(store, layout.trial_path(setup.name, trial.name()))
    work = Path(tempfile.mkdtemp(prefix="trial-", dir=node_dir("work"))) if store.remote else None
    local = (work / "run" if work else store.local(setup.name)) / layout.TRIALS  # this trial's view
    out = local / trial.name()
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.FAILED).unlink(missing_ok=True)  # a retry starts clean
    if store.remote:
        pull_files(store, layout.trial_path(setup.name, trial.name()), out, layout.RESUME_FILES)
    sync = pusher(store, local, layout.trial_path(setup.name), fence=attempt.check)
    try:
        if point.fork_iter is not None:
            shared = seed_branch(store, setup.name, local, point, sync, report)
            if shared and shared[-1]["status"] == "diverged":
                return
        _train(setup, store, point, out, sync, attempt, report)
    except StaleAttempt as e:  # the folder is the newer attempt's: leave it as it is
        print(f"{trial.name()}: {e}", flush=True)
        raise
    except BaseException:
        try:
            attempt.check()
            (out / layout.FAILED).write_text(traceback.format_exc())  # tells waiting branches
            sync(out / layout.FAILED)
        except (OSError, StaleAttempt) as e:  # a full disk, a storage outage, a newer attempt: the trial's own error matters more
            print(f"{trial.name()}: could not record the failure in {out / layout.FAILED}: {e}", flush=True)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _to_tune(trial: Trial, row: dict[str, Any]) -> None:
    import ray.tune

    ray.tune.report(tune_row(trial, row))


def seed_branch(store: Store, name: str, local: Path, point: Point, sync: Sync,
                report: Report) -> list[dict[str, Any]]:
    """Wait for the trunk's fork checkpoint (in `local`, this trial's view of the run's trials
    folder), start the branch's folder from it and `report` the shared rows; returns them. A
    restarted branch that already holds its checkpoint does not wait: it took the fork checkpoint."""
    assert point.fork_iter is not None
    trial, trunk = point.trial, point.trunk
    trunk_dir, out = local / trunk.name(), local / trial.name()
    if not has_own_state(out):  # a restarted branch has its own copy (and took the trunk's)
        _wait_for_trunk(store, layout.trial_path(name, trunk.name()), trunk_dir, point.fork_iter, trial)
    shared = start_branch(trunk_dir, out, point.fork_iter, trial)
    for file in layout.RESUME_FILES:
        if (out / file).is_file():
            sync(out / file)
    # this branch is the fork point's only reader, and now holds its own copy
    fork = fork_file(trunk_dir, point.fork_iter)
    store.delete(layout.trial_path(name, trunk.name(), fork.name))
    fork.unlink(missing_ok=True)
    for row in shared:
        report(row)
    return shared


def _train(setup: StudySetup, store: Store, point: Point, out: Path, sync: Sync, attempt: Attempt,
           report: Report) -> None:
    """Train the trial in this process (one worker, no GPU) or as a Ray Train job (several, or GPUs)."""
    cfg, trial = setup.study, point.trial
    weights = setup.pretrained_weights
    if setup.weights_in_store and setup.pretrained_weights is not None:
        weights = str(out / "pretrained.pt")
        store.get(setup.pretrained_weights, weights)
    data_root = setup.data_root or str(node_dir(layout.DATA))
    if cfg.resources.in_process:
        import torch

        torch.set_num_threads(cfg.resources.cpus_per_worker)
        cfg, weights = localized(cfg, weights)  # inputs given as URIs: this node's copies
        fence: Fence = attempt.check
        train_trial(cfg, trial, out_dir=out, data_root=data_root, pretrained_weights=weights,
                    fork_at=point.fork_at, pause_at=point.stop_at, sync=sync, fence=fence,
                    report=lambda row, _ckpt: report(row))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from study.tune.jobs import SharedTrial, run_trial_on_ray

    shared = SharedTrial(storage=setup.storage, trial_dir=layout.trial_path(setup.name, trial.name()),
                         weights=setup.pretrained_weights if setup.weights_in_store else None)
    run_trial_on_ray(cfg, trial, out_dir=out, data_root=data_root, pretrained_weights=weights,
                     storage=store.uri(setup.name, layout.TRAIN_RUNS), fork_at=point.fork_at,
                     pause_at=point.stop_at, run_name=point.tune_name(),
                     callbacks=[TuneReportCallback()], shared=shared if store.remote else None, attempt=attempt)


def _wait_for_trunk(store: Store, trunk_rel: str, trunk_dir: Path, fork_iter: int, branch: Trial,
                    poll_s: float = 1.0) -> None:
    def state() -> str:
        if store.remote:  # the trunk may train on another node: look at the shared copy
            # the log first: a fork checkpoint is pushed before any later row, so a log that says
            # 'finished' is never read before the fork checkpoint it implies
            pull_files(store, trunk_rel, trunk_dir, [layout.METRICS, layout.FAILED, layout.CHECKSUMS,
                                                     fork_file(trunk_dir, fork_iter).name])
        return trunk_state(trunk_dir, fork_iter)

    now = state()
    if now == "pending":
        print(f"{branch.name()}: waiting for {trunk_dir.name} to reach iteration {fork_iter}", flush=True)
    while now == "pending":
        time.sleep(poll_s)
        now = state()
    if now == "failed":
        raise RuntimeError(f"{branch.name()} cannot fork: its trunk {trunk_dir.name} failed "
                           f"(see {store.uri(trunk_rel, layout.FAILED)})")
    if now == "damaged":
        raise RuntimeError(f"{branch.name()} cannot fork: its trunk's fork checkpoint "
                           f"{store.uri(trunk_rel, layout.fork_checkpoint(fork_iter))} is not the file that was "
                           f"written ({layout.check_checkpoint(fork_file(trunk_dir, fork_iter)).problem}); delete the "
                           "trunk's folder and run with --resume to train it again")
    if now == "lost":
        raise RuntimeError(f"{branch.name()} cannot fork: its trunk {trunk_dir.name} finished, but its fork "
                           f"checkpoint {store.uri(trunk_rel, layout.fork_checkpoint(fork_iter))} is gone; "
                           "start the study again under another --name")
