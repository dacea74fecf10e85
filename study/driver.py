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
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from study.config import StudyConfig, dump_study, study_from_dict, to_dict
from study.errors import ConfigError
from study.forking import FAILED_MARKER, fork_file, start_branch, trunk_state
from study.plan import plan_study, size_from_label
from study.searcher import METRIC, MODE, StudySearcher
from study.preflight import check_study_data
from study.storage import TRIAL_FILES, RunLock, Store, pull_files, pusher
from study.trial import Trial, train_trial, trial_device

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
    store = Store(setup["storage"])
    trial = trial_of(point)
    rel = f"{setup['name']}/trials/{trial.name()}"
    work = Path(tempfile.mkdtemp(prefix="trial-", dir=node_dir("work"))) if store.remote else None
    local = (work / "run" if work else store.local(setup["name"])) / "trials"  # this trial's view
    out = local / trial.name()
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED_MARKER).unlink(missing_ok=True)  # a retry starts clean
    if store.remote:
        pull_files(store, rel, out, TRIAL_FILES)  # resume on whichever node this lands
    sync = pusher(store, local, f"{setup['name']}/trials")

    def to_tune(row: dict[str, Any]) -> None:
        ray.tune.report({**row, "trial": trial.name()})

    try:
        if point["fork_iter"] is not None:
            trunk = dataclasses.replace(trial, schedule=float(point["trunk_schedule"]))
            trunk_dir = local / trunk.name()
            _wait_for_trunk(store, f"{setup['name']}/trials/{trunk.name()}", trunk_dir, point["fork_iter"], trial)
            shared = start_branch(trunk_dir, out, point["fork_iter"], trial)
            for name in TRIAL_FILES:
                if (out / name).is_file():
                    sync(out / name)
            # this branch is the fork point's only reader, and now holds its own copy
            fork = fork_file(trunk_dir, point["fork_iter"])
            store.delete(f"{setup['name']}/trials/{trunk.name()}/{fork.name}")
            fork.unlink(missing_ok=True)
            for row in shared:
                to_tune(row)
            if shared and shared[-1]["status"] == "diverged":
                return
        weights = setup["pretrained_weights"]
        if store.remote and setup["weights_in_store"]:
            weights = str(out / "pretrained.pt")
            store.get(setup["pretrained_weights"], weights)
        data_root = setup["data_root"] or str(node_dir("data"))
        if cfg.resources.workers == 1:
            import torch

            torch.set_num_threads(cfg.resources.cpus_per_worker)
            train_trial(cfg, trial, out_dir=out, data_root=data_root, pretrained_weights=weights,
                        fork_at=point["fork_at"], device=trial_device(cfg), sync=sync,
                        report=lambda row, _ckpt: to_tune(row))
        else:
            from ray.tune.integration.ray_train import TuneReportCallback

            from study.trainer import run_trial_on_ray

            run_trial_on_ray(cfg, trial, out_dir=out, data_root=data_root,
                             pretrained_weights=weights, storage=store.uri(setup["name"], "train_runs"),
                             fork_at=point["fork_at"], callbacks=[TuneReportCallback()],
                             store=(setup["storage"], rel, setup["pretrained_weights"]
                                    if setup["weights_in_store"] else None) if store.remote else None)
    except BaseException:
        (out / FAILED_MARKER).write_text(traceback.format_exc())  # tells waiting branches
        sync(out / FAILED_MARKER)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _wait_for_trunk(store: Store, trunk_rel: str, trunk_dir: Path, fork_iter: int, branch: Trial,
                    poll_s: float = 1.0) -> None:
    def state() -> str:
        if store.remote:  # the trunk may train on another node: look at the shared copy
            pull_files(store, trunk_rel, trunk_dir, [fork_file(trunk_dir, fork_iter).name, "metrics.jsonl",
                                                     FAILED_MARKER])
        return trunk_state(trunk_dir, fork_iter)

    now = state()
    if now == "pending":
        print(f"{branch.name()}: waiting for {trunk_dir.name} to reach iteration {fork_iter}", flush=True)
    while now == "pending":
        time.sleep(poll_s)
        now = state()
    if now == "failed":
        raise RuntimeError(f"{branch.name()} cannot fork: its trunk {trunk_dir.name} failed "
                           f"(see {store.uri(trunk_rel, FAILED_MARKER)})")


def node_dir(kind: str) -> Path:
    """This node's own folder for `kind` ('data': the synthetic set, made once per node; 'work':
    trials' scratch folders) when the study's storage is a URI: $STUDY_LOCAL_DIR, else a folder in
    the system's temp directory."""
    root = Path(os.environ.get("STUDY_LOCAL_DIR") or Path(tempfile.gettempdir()) / f"study-{os.getuid()}")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(cfg: StudyConfig, store: Store) -> tuple[str | None, bool]:
    """Make the pre-trained backbone every pretrained trial loads, in the driver, before any trial
    starts (the data were made and checked by `check_study_data`). Returns the weights for init
    'pretrained' and whether that is a path in the store (a URI store: the backbone is pushed
    there, and each trial pulls it)."""
    from study.pretrain import cached_checkpoint_path, study_weights

    if not store.remote:
        weights = study_weights(cfg, store.local("")) if "pretrained" in cfg.grid.init else None
        return weights or cfg.model.pretrained_weights, False
    if "pretrained" not in cfg.grid.init or cfg.model.pretrained_weights is not None:
        return cfg.model.pretrained_weights, False  # a user's file: it must exist on every node
    cache = node_dir("pretrained")
    name = cached_checkpoint_path(cfg.pretrain, cfg.model.backbone, cache).name
    store.get(f"pretrained/{name}", cache / name)  # made by an earlier study, if any
    local = Path(study_weights(cfg, node_dir("")))
    if not store.exists(f"pretrained/{name}"):
        store.put(local, f"pretrained/{name}")
    return f"pretrained/{name}", True


def run_study(cfg: StudyConfig, *, storage: str | Path = "runs", name: str | None = None,
              address: str | None = None, resume: bool = False, forking: bool = True,
              verbose: int = 1, timings: dict[str, float] | None = None) -> Any:
    """Run every trial of `cfg` on Ray Tune; returns Tune's ResultGrid. Results: see module doc.

    Before Ray starts: the run folder's lock, its consistency with `cfg`, and the data
    (study/preflight.py); errors are ConfigError / DataError naming what to fix. `timings`, if
    given, receives the seconds of each phase (checks and data, pre-training, Ray start, trials)."""
    store = Store(storage)
    name = name or cfg.name
    with RunLock(store, name):  # a second `study run` on the same folder is refused
        return _run_locked(cfg, store, name, address=address, resume=resume, forking=forking,
                           verbose=verbose, timings={} if timings is None else timings)


def _run_locked(cfg: StudyConfig, store: Store, name: str, *, address: str | None, resume: bool,
                forking: bool, verbose: int, timings: dict[str, float]) -> Any:
    import ray
    from ray import tune

    run_dir = store.uri(name)
    saved = store.read_text(f"{name}/study.yaml")
    if saved is not None and saved != dump_study(cfg):
        raise ConfigError("", f"{run_dir} holds a study with another configuration (compare "
                              f"{store.uri(name, 'study.yaml')}); choose another --name or --storage, or delete it")
    if not resume and store.listdir(f"{name}/trials"):
        raise ConfigError("--name", f"{run_dir} already holds trials of this study: add --resume to "
                                    "continue it (finished trials are kept), or choose another --name")
    tick = time.perf_counter()

    def phase(label: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[label] = timings.get(label, 0.0) + now - tick
        tick = now

    check_study_data(cfg, node_dir("data") if store.remote else store.local("data"))  # before Ray
    store.write_text(f"{name}/study.yaml", dump_study(cfg))
    phase("checks_and_data")
    weights, weights_in_store = prepare(cfg, store)
    phase("pretraining")

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
    phase("ray_start")
    if inline:
        trial_resources = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    elif ray.cluster_resources().get(TRAIN_DRIVER):
        trial_resources = {TRAIN_DRIVER: 1}
    else:
        print(f"note: the cluster has no {TRAIN_DRIVER} resource (see cluster.yaml); "
              "each trial's Train driver takes 1 CPU")
        trial_resources = {"CPU": 1}
    trainable = tune.with_resources(
        tune.with_parameters(_study_trial, setup={
            "study": to_dict(cfg), "storage": store.uri(), "name": name,
            "data_root": None if store.remote else str(store.local("data")),  # None: each node's own
            "pretrained_weights": weights, "weights_in_store": weights_in_store}),
        trial_resources)
    plan = plan_study(cfg)
    iterations = plan.iterations_forked if forking else plan.iterations_separate
    print(f"study {cfg.name}: {plan.trials} trials, {iterations:,} iterations"
          f"{' with forking' if forking else ''} -> {run_dir}")
    print(f"watch: tensorboard --logdir {store.uri(name, 'tune')}"
          + (f"   |   Ray dashboard: http://{dashboard}" if dashboard else ""), flush=True)
    tune_dir = store.uri(name, "tune")
    if resume and tune.Tuner.can_restore(tune_dir):
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=StudySearcher(cfg, forking=forking), num_samples=plan.trials,
                metric=METRIC, mode=MODE, max_concurrent_trials=res.max_concurrent_trials,
                reuse_actors=True),  # one process per concurrent slot: no torch import per trial
            run_config=tune.RunConfig(
                name="tune", storage_path=run_dir, verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                progress_reporter=tune.CLIReporter(
                    metric_columns=["iteration", "loss", METRIC, "segm_AP"],
                    parameter_columns=["init", "schedule", "size", "seed", "lr"],
                    max_report_frequency=30)))
    grid = tuner.fit()
    phase("trials")
    return grid
