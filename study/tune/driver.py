"""The study on Ray Tune: one Tune trial per (cell, LR), suggested by `StudySearcher`, each run
by `study.tune.trial_fn.study_trial`.

`run_study(cfg, storage=...)` checks the study and its data, prepares what every trial shares (the
synthetic set, the pre-trained backbone; both cached under `storage`), starts or joins Ray, and
runs the Tuner; `study_run` adds the report and `run.json`. The run folder's files are listed in
`study.layout`. A multi-worker trial's Ray Train driver holds one `TRAIN_DRIVER` token while its
workers get their own placement group.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study import layout
from study.config import StudyConfig, dump_study
from study.errors import ConfigError
from study.plan.budget import evaluation_warnings, plan_study
from study.plan.evidence import look_sizes, up_to_look
from study.plan.trials import Point
from study.tune.launch import start_ray
from study.tune.preflight import check_study_data, check_study_weights
from study.tune.searcher import METRIC, MODE, RunFiles, StudySearcher
from study.tune.storage import RunLock, Store, analyze_stored, node_dir
from study.tune.trial_fn import StudySetup, study_trial
from study.tune.weights import weights_in_store

TRAIN_DRIVER = "TRAIN_DRIVER"  # the custom resource a multi-worker trial's driver holds


def run_study(cfg: StudyConfig, *, storage: str | Path = "runs", name: str | None = None,
              address: str | None = None, resume: bool = False, forking: bool = True,
              verbose: int = 1, timings: dict[str, float] | None = None) -> Any:
    """Run every trial of `cfg` on Ray Tune; returns Tune's ResultGrid. Results: see module doc.

    Before Ray starts: the run folder's lock, its consistency with `cfg`, and the data
    (`study.tune.preflight`); errors are ConfigError / DataError naming what to fix. `timings`, if
    given, receives the seconds of each phase (checks and data, pre-training, Ray start, trials)."""
    store = Store(storage)
    name = name or cfg.name
    with RunLock(store, name):  # a second `study run` on the same folder is refused
        return _run_locked(cfg, store, name, address=address, resume=resume, forking=forking,
                           verbose=verbose, timings={} if timings is None else timings)


def _run_locked(cfg: StudyConfig, store: Store, name: str, *, address: str | None, resume: bool,
                forking: bool, verbose: int, timings: dict[str, float]) -> Any:
    from ray import tune

    _refuse_conflicts(cfg, store, name, resume=resume, forking=forking)
    tick = time.perf_counter()

    def phase(label: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[label] = timings.get(label, 0.0) + now - tick
        tick = now

    data_root = node_dir(layout.DATA) if store.remote else store.local(layout.DATA)
    check_study_data(cfg, data_root)  # before Ray
    check_study_weights(cfg, cfg.model.pretrained_weights)
    store.write_text(f"{name}/{layout.STUDY_FILE}", dump_study(cfg))
    phase("checks_and_data")
    per_trial = cfg.resources.workers * cfg.resources.cpus_per_worker
    # before the pre-training: with GPUs or several workers it is a Ray Train job on this Ray
    dashboard = start_ray(cpus=per_trial, address=address,
                          resources={TRAIN_DRIVER: max(1, (os.cpu_count() or 1) // per_trial)})
    phase("ray_start")
    weights, in_store = weights_in_store(cfg, store)
    phase("pretraining")
    setup = StudySetup(study=cfg, storage=store.uri(), name=name,
                       data_root=None if store.remote else str(data_root),  # None: each node's own
                       pretrained_weights=weights, weights_in_store=in_store)
    trainable = tune.with_resources(tune.with_parameters(study_trial, setup=setup), _trial_resources(cfg))
    most = _announce(cfg, store, name, forking=forking, dashboard=dashboard)
    tune_dir = store.uri(name, layout.TUNE)
    if resume and tune.Tuner.can_restore(tune_dir):
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_errored=True)
    else:
        tuner = _new_tuner(cfg, store, name, trainable, forking=forking, verbose=verbose, trials=most.tune_trials)
    grid = tuner.fit()
    phase("trials")
    return grid


def _refuse_conflicts(cfg: StudyConfig, store: Store, name: str, *, resume: bool, forking: bool) -> None:
    """ConfigError for a run folder that holds another study, or this one's trials without
    --resume, and for halving without forking."""
    run_dir = store.uri(name)
    saved = store.read_text(f"{name}/{layout.STUDY_FILE}")
    if saved is not None and saved != dump_study(cfg):
        raise ConfigError("", f"{run_dir} holds a study with another configuration (compare "
                              f"{store.uri(name, layout.STUDY_FILE)}); choose another --name or --storage, "
                              "or delete it")
    if not resume and store.listdir(layout.trial_path(name)):
        raise ConfigError("--name", f"{run_dir} already holds trials of this study: add --resume to "
                                    "continue it (finished trials are kept), or choose another --name")
    if cfg.lr.halving is not None and not forking:
        raise ConfigError("lr.halving", "halving continues the trunks of the kept LRs: it needs forking "
                                        "(drop --no-fork, or remove lr.halving)")


def _trial_resources(cfg: StudyConfig) -> dict[str, float]:
    """What a Tune trial asks Ray for: its worker's CPU and GPU when it trains in its own process;
    else one TRAIN_DRIVER token for its Ray Train driver (one CPU where the cluster has none)."""
    import ray

    res = cfg.resources
    if res.in_process:
        return {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    if ray.cluster_resources().get(TRAIN_DRIVER):
        return {TRAIN_DRIVER: 1}
    print(f"note: the cluster has no {TRAIN_DRIVER} resource (see cluster.yaml); "
          "each trial's Train driver takes 1 CPU")
    return {"CPU": 1}


def _announce(cfg: StudyConfig, store: Store, name: str, *, forking: bool, dashboard: str | None) -> Any:
    """Print what the study will train and where to watch it; return the plan of every look."""
    plan = plan_study(cfg)
    most = plan_study(up_to_look(cfg, len(look_sizes(cfg)) - 1))  # every seed, if every look is needed
    iterations = (plan.iterations_halving if plan.halving else plan.iterations_forked) if forking \
        else plan.iterations_separate
    how = (" with forking and halving" if plan.halving else " with forking") if forking else ""
    more = (f" at the first look ({len(cfg.grid.seeds)} seeds), up to {most.trials} trials with "
            f"{cfg.evidence.max_seeds} seeds while a claim is open" if cfg.evidence else "")
    print(f"study {cfg.name}: {plan.trials} trials, {iterations:,} iterations{how}{more} -> {store.uri(name)}")
    for line in evaluation_warnings(cfg):
        print(line)
    print(f"watch: tensorboard --logdir {store.uri(name, layout.TUNE)}"
          + (f"   |   Ray dashboard: http://{dashboard}" if dashboard else ""), flush=True)
    return most


def _new_tuner(cfg: StudyConfig, store: Store, name: str, trainable: Any, *, forking: bool, verbose: int,
               trials: int) -> Any:
    """Tune with the study's searcher, at most `trials` trials (halving may drop LRs, the looks may
    stop early), trial folders named as the study's trials."""
    from ray import tune

    res = cfg.resources
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=StudySearcher(cfg, forking=forking, files=RunFiles(store.uri(), name)),
            num_samples=trials, metric=METRIC, mode=MODE, max_concurrent_trials=res.max_concurrent_trials,
            reuse_actors=True,  # one process per concurrent slot: no torch import per trial
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=layout.TUNE, storage_path=store.uri(name), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            progress_reporter=tune.CLIReporter(
                metric_columns=["iteration", "loss", METRIC, "segm_AP"],
                parameter_columns=["init", "schedule", "size", "seed", "lr"],
                max_report_frequency=30)))


def trial_name(tune_trial: Any) -> str:
    """A Tune trial's name and folder: the study trial's own, e.g. 'scratch_3x_n1000_lr0.05_s0'
    (a trunk segment that pauses adds where: '..._to300')."""
    return Point.from_config(tune_trial.config).tune_name()


def machine() -> dict[str, Any]:
    """What this process runs on, for run.json and the report."""
    import torch

    from study.train.precision import cpu_has_native_bf16, cpu_model

    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpus": os.cpu_count(),
                            "cpu": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(),
                            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


@dataclass
class StudyRun:
    """What `study_run` did: the summary it printed, where the report is, the seconds per phase."""

    summary: str
    report: str
    phases_s: dict[str, float] = field(default_factory=dict)
    errored: int = 0  # Tune trials that ended in an error (a diverged trial is a result, not one)


def study_run(cfg: StudyConfig, *, storage: str | Path = "runs", name: str | None = None,
              address: str | None = None, resume: bool = False, forking: bool = True,
              tol: float | None = None) -> StudyRun:
    """`study run`: `run_study`, then `run.json` and the report beside the trials (on a URI store
    the results are analysed in a local copy and the report is pushed back)."""
    start, started = time.perf_counter(), _now()
    name = name or cfg.name
    timings: dict[str, float] = {}
    grid = run_study(cfg, storage=storage, name=name, address=address, resume=resume, forking=forking,
                     timings=timings)
    store = Store(storage)

    def run_info() -> None:
        info = layout.RunInfo(started=started, finished=_now(), seconds=time.perf_counter() - start,
                              phases_s=timings, machine=machine())
        store.write_text(f"{name}/{layout.RUN_INFO}", info.to_json())

    run_info()  # the report reads it
    tick = time.perf_counter()
    summary, report = analyze_stored(store, name, tol=tol)
    timings["analysis"] = time.perf_counter() - tick
    run_info()
    return StudyRun(summary=summary, report=report, phases_s=timings, errored=grid.num_errors)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")
