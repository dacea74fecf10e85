"""The study on Ray Tune: one Tune trial per (cell, LR), suggested by `StudySearcher`.

`run_study(cfg, storage=...)` prepares what every trial shares (the synthetic set, the
pre-trained backbone; both cached under `storage`), starts or joins Ray, and runs the Tuner.
Each Tune trial runs `_study_trial`:

- a branch (a shorter schedule, with forking on) waits for its trunk's fork checkpoint, seeds
  its folder from it (study/forking.py) and reports the shared rows to Tune first;
- with `resources.workers: 1` the trial trains in the Tune trial's own process (a Ray Train
  worker group would add ~10 s per trial and nothing else); with more workers it is a Ray Train
  V2 data-parallel job (`TorchTrainer(...).fit()` inside the function trainable, reports
  forwarded by `TuneReportCallback`; RAY_NOTES §1), whose driver holds one `TRAIN_DRIVER` token
  while its workers get their own placement group.

Layout of `<storage>/<name>/`: `study.yaml` (the resolved config), `trials/<trial>/`
(`metrics.jsonl`, `checkpoint.pt`, fork checkpoints: the durable results), `tune/` (Tune's
experiment: restore state, per-trial result files, TensorBoard events), `train_runs/` (Ray Train
checkpoints of multi-worker trials).
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Any

from study.config import StudyConfig, dump_study, study_from_dict, to_dict
from study.errors import ConfigError
from study.forking import FAILED_MARKER, start_branch, trunk_state
from study.plan import plan_study, size_from_label
from study.searcher import METRIC, MODE, StudySearcher
from study.trial import Trial, split_paths, train_trial, trial_device

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # see study/trainer.py
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic table: one line per trial, our columns
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the dashboard's Train API lists runs
TRAIN_DRIVER = "TRAIN_DRIVER"  # the custom resource a multi-worker trial's driver holds


def trial_of(point: dict[str, Any]) -> Trial:
    """The Trial a searcher suggestion describes."""
    train_images, data_fraction = size_from_label(point["size"])
    return Trial(init=point["init"], schedule=float(point["schedule"]), base_lr=float(point["lr"]),
                 seed=int(point["seed"]), train_images=train_images, data_fraction=data_fraction)


def _study_trial(point: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial (see the module docstring)."""
    import ray.tune

    cfg = study_from_dict(setup["study"])
    run_dir = Path(setup["run_dir"])
    trial = trial_of(point)
    out = run_dir / "trials" / trial.name()
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED_MARKER).unlink(missing_ok=True)  # a retry starts clean

    def to_tune(row: dict[str, Any]) -> None:
        ray.tune.report({**row, "trial": trial.name()})

    try:
        if point["fork_iter"] is not None:
            trunk = dataclasses.replace(trial, schedule=float(point["trunk_schedule"]))
            trunk_dir = run_dir / "trials" / trunk.name()
            _wait_for_trunk(trunk_dir, point["fork_iter"], trial)
            shared = start_branch(trunk_dir, out, point["fork_iter"], trial)
            for row in shared:
                to_tune(row)
            if shared and shared[-1]["status"] == "diverged":
                return
        weights = setup["pretrained_weights"]
        if cfg.resources.workers == 1:
            import torch

            torch.set_num_threads(cfg.resources.cpus_per_worker)
            train_trial(cfg, trial, out_dir=out, data_root=setup["data_root"], pretrained_weights=weights,
                        fork_at=point["fork_at"], device=trial_device(cfg),
                        report=lambda row, _ckpt: to_tune(row))
        else:
            from ray.tune.integration.ray_train import TuneReportCallback

            from study.trainer import run_trial_on_ray

            run_trial_on_ray(cfg, trial, out_dir=out, data_root=setup["data_root"],
                             pretrained_weights=weights, storage=run_dir / "train_runs",
                             fork_at=point["fork_at"], callbacks=[TuneReportCallback()])
    except BaseException:
        (out / FAILED_MARKER).write_text(traceback.format_exc())  # tells waiting branches
        raise


def _wait_for_trunk(trunk_dir: Path, fork_iter: int, branch: Trial, poll_s: float = 1.0) -> None:
    state = trunk_state(trunk_dir, fork_iter)
    if state == "pending":
        print(f"{branch.name()}: waiting for {trunk_dir.name} to reach iteration {fork_iter}", flush=True)
    while state == "pending":
        time.sleep(poll_s)
        state = trunk_state(trunk_dir, fork_iter)
    if state == "failed":
        raise RuntimeError(f"{branch.name()} cannot fork: its trunk {trunk_dir.name} failed "
                           f"(see {trunk_dir / FAILED_MARKER})")


def prepare(cfg: StudyConfig, storage: Path) -> str | None:
    """Make what every trial shares, in the driver, before any trial starts: the synthetic set
    (if the study uses it) and the pre-trained backbone (if a trial needs one). Returns the
    weights to load for init 'pretrained'."""
    from study.pretrain import study_weights

    split_paths(cfg, storage / "data")
    return study_weights(cfg, storage) if "pretrained" in cfg.grid.init else cfg.model.pretrained_weights


def run_study(cfg: StudyConfig, *, storage: str | Path = "runs", name: str | None = None,
              address: str | None = None, resume: bool = False, forking: bool = True,
              verbose: int = 1) -> Any:
    """Run every trial of `cfg` on Ray Tune; returns Tune's ResultGrid. Results: see module doc."""
    import ray
    from ray import tune

    storage = Path(storage).resolve()
    run_dir = storage / (name or cfg.name)
    saved = run_dir / "study.yaml"
    if saved.is_file() and saved.read_text() != dump_study(cfg):
        raise ConfigError("", f"{run_dir} holds a study with another configuration (compare "
                              f"{saved}); choose another --name or --storage, or delete it")
    trials = run_dir / "trials"
    if not resume and trials.is_dir() and any(trials.iterdir()):
        raise ConfigError("--name", f"{run_dir} already holds trials of this study: add --resume to "
                                    "continue it (finished trials are kept), or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(dump_study(cfg))
    weights = prepare(cfg, storage)

    res = cfg.resources
    inline = res.workers == 1
    dashboard = None
    if not ray.is_initialized():
        if address:
            dashboard = ray.init(address=address).dashboard_url
        else:
            cpus = os.cpu_count() or 1
            slots = max(1, cpus // (res.workers * res.cpus_per_worker))
            dashboard = ray.init(num_cpus=max(cpus, res.workers * res.cpus_per_worker),
                                 resources={TRAIN_DRIVER: slots}).dashboard_url
    if inline:
        trial_resources = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    elif ray.cluster_resources().get(TRAIN_DRIVER):
        trial_resources = {TRAIN_DRIVER: 1}
    else:
        print(f"note: the cluster has no {TRAIN_DRIVER} resource (see cluster.yaml); "
              "each trial's Train driver takes 1 CPU")
        trial_resources = {"CPU": 1}
    trainable = tune.with_resources(
        tune.with_parameters(_study_trial, setup={"study": to_dict(cfg), "run_dir": str(run_dir),
                                                  "data_root": str(storage / "data"),
                                                  "pretrained_weights": weights}),
        trial_resources)
    plan = plan_study(cfg)
    iterations = plan.iterations_forked if forking else plan.iterations_separate
    print(f"study {cfg.name}: {plan.trials} trials, {iterations:,} iterations"
          f"{' with forking' if forking else ''} -> {run_dir}")
    print(f"watch: tensorboard --logdir {run_dir / 'tune'}"
          + (f"   |   Ray dashboard: http://{dashboard}" if dashboard else ""), flush=True)
    tune_dir = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=StudySearcher(cfg, forking=forking), num_samples=plan.trials,
                metric=METRIC, mode=MODE, max_concurrent_trials=res.max_concurrent_trials,
                reuse_actors=True),  # one process per concurrent slot: no torch import per trial
            run_config=tune.RunConfig(
                name="tune", storage_path=str(run_dir), verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                progress_reporter=tune.CLIReporter(
                    metric_columns=["iteration", "loss", METRIC, "segm_AP"],
                    parameter_columns=["init", "schedule", "size", "seed", "lr"],
                    max_report_frequency=30)))
    return tuner.fit()
