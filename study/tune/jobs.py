"""Ray Train jobs: one trial on data-parallel workers (`run_trial_on_ray`), and the backbone's
pre-training on them (`pretrain_on_ray`).

A trial's workers each run `study.train.loop.train_trial` in Ray Train's process group (gloo on
CPUs, NCCL on GPUs; the loop wraps the model in DDP and shares values through
`study.train.collectives`, one worker included). Each report of the loop becomes one
`ray.train.report`, with rank 0's checkpoint attached where it wrote one, so Ray Train keeps the
trial's last checkpoints and a restarted worker group resumes from `ray.train.get_checkpoint()`.
What the workers need crosses the Ray boundary as a `TrialJob`, turned into plain data and rebuilt
on each worker's first line. Rank 0 alone writes the trial's folder, fenced by the attempt's token
(`study.tune.attempt`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import layout
from study.config import PretrainConfig, StudyConfig, study_from_dict, to_dict
from study.plan.trials import Trial
from study.train.build import split_paths
from study.train.loop import Fence, NanDrill, Sync, train_trial
from study.train.pretrain import PretrainRecord
from study.tune.attempt import Attempt
from study.tune.inputs import localized
from study.tune.launch import fit_torch, start_ray, tune_row
from study.layout import is_uri
from study.tune.storage import Store, node_dir, pull_files, pusher


@dataclass(frozen=True)
class SharedTrial:
    """Where a trial's files live when the study's storage is a URI (not a folder every node has)."""

    storage: str  # the storage URI
    trial_dir: str  # the trial's folder in it, relative: `<name>/trials/<trial>`
    weights: str | None  # the pre-trained backbone in it, relative, or None


@dataclass(frozen=True)
class TrialJob:
    """What every worker of a trial's Ray Train job is given."""

    study: StudyConfig
    trial: Trial
    out_dir: str  # the trial's folder (when `shared` is None)
    data_root: str
    pretrained_weights: str | None
    fork_at: tuple[int, ...] = ()
    pause_at: int | None = None
    shared: SharedTrial | None = None
    attempt: Attempt | None = None  # the Tune attempt's claim on the trial folder (None: unfenced)
    drill: NanDrill | None = None

    def to_config(self) -> dict[str, Any]:
        """Plain data, Ray Train's `train_loop_config`."""
        return {"study": to_dict(self.study), "trial": self.trial.to_dict(), "out_dir": self.out_dir,
                "data_root": self.data_root, "pretrained_weights": self.pretrained_weights,
                "fork_at": list(self.fork_at), "pause_at": self.pause_at,
                "shared": None if self.shared is None else vars(self.shared).copy(),
                "attempt": None if self.attempt is None else self.attempt.to_dict(),
                "drill": None if self.drill is None else vars(self.drill).copy()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialJob:
        shared, attempt, drill = config["shared"], config["attempt"], config["drill"]
        return cls(study=study_from_dict(config["study"]), trial=Trial.from_dict(config["trial"]),
                   out_dir=config["out_dir"], data_root=config["data_root"],
                   pretrained_weights=config["pretrained_weights"], fork_at=tuple(config["fork_at"]),
                   pause_at=config["pause_at"], shared=None if shared is None else SharedTrial(**shared),
                   attempt=None if attempt is None else Attempt(**attempt),
                   drill=None if drill is None else NanDrill(**drill))


def _trial_worker(config: dict[str, Any]) -> None:
    """One worker of a trial's job (see the module docstring)."""
    import ray.train
    import ray.train.torch

    job = TrialJob.from_config(config)
    writer = ray.train.get_context().get_world_rank() == 0
    fence: Fence = job.attempt.check if job.attempt is not None and writer else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="trial-", dir=node_dir("work")) as scratch:  # this node's disk
        resume_from = None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:  # a restarted worker group: every rank resumes from Train's copy
            resume = Path(scratch) / "resume"  # the checkpoint and its record (checked before use)
            with checkpoint.as_directory() as d:
                shutil.copytree(d, resume)
            resume_from = resume / layout.CHECKPOINT

        out_dir, weights = Path(job.out_dir), job.pretrained_weights
        sync: Sync = lambda _path: None
        if job.shared is not None:  # shared storage is a URI: this node works in `scratch`
            store, out_dir = Store(job.shared.storage), Path(scratch) / "trial"
            pull_files(store, job.shared.trial_dir, out_dir, layout.RESUME_FILES)
            if job.shared.weights is not None:
                weights = str(Path(scratch) / "pretrained.pt")
                store.get(job.shared.weights, weights)
            sync = pusher(store, out_dir, job.shared.trial_dir, fence=fence)

        def report(row: dict[str, Any], saved: Path | None) -> None:
            with tempfile.TemporaryDirectory() as d:
                attached = None
                if saved is not None:
                    shutil.copy(saved, Path(d) / layout.CHECKPOINT)
                    shutil.copy(saved.parent / layout.CHECKSUMS, Path(d) / layout.CHECKSUMS)
                    attached = ray.train.Checkpoint.from_directory(d)
                ray.train.report(tune_row(job.trial, row), checkpoint=attached)  # a barrier: every rank calls it

        study, weights = localized(job.study, weights)  # inputs given as URIs: this node's copies
        train_trial(study, job.trial, out_dir=out_dir, data_root=job.data_root,
                    pretrained_weights=weights, report=report, resume_from=resume_from, fork_at=job.fork_at,
                    pause_at=job.pause_at, device=ray.train.torch.get_device(), sync=sync, fence=fence,
                    drill=job.drill)


def run_trial_on_ray(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                     pretrained_weights: str | None = None, storage: str | Path | None = None,
                     fork_at: Collection[int] = (), pause_at: int | None = None,
                     run_name: str | None = None, callbacks: list[Any] | None = None,
                     shared: SharedTrial | None = None, attempt: Attempt | None = None,
                     drill: NanDrill | None = None) -> Any:
    """Run one trial on `cfg.resources.workers` Ray Train workers (one included: the same
    process group, DDP and collectives as eight); returns Ray's Result.

    `storage` (a path or URI; default beside `out_dir`) holds Ray Train's checkpoints. With
    `shared` (the study's storage is a URI) every worker pulls the trial's files into its own
    scratch folder and rank 0 pushes what it writes, instead of using `out_dir`. `callbacks` go
    to Ray Train's RunConfig (the study passes Tune's TuneReportCallback); the run is named
    `run_name` (default: the trial's name), so a restarted trial finds its own Train snapshot and
    the next segment of a halving trunk (`pause_at`) starts a run of its own, from the trial's
    checkpoint. `attempt` fences rank 0's writes; `drill` plants a NaN (`study.train.loop.NanDrill`).
    The workers are placed as `cfg.placement_strategy` says (one node for SyncBN).
    """
    out_dir, data_root = Path(out_dir).resolve(), Path(data_root).resolve()  # workers chdir
    split_paths(cfg, data_root)  # make the synthetic set once, before the workers race to
    res = cfg.resources
    start_ray(cpus=res.workers * res.cpus_per_worker)
    job = TrialJob(study=cfg, trial=trial, out_dir=str(out_dir), data_root=str(data_root),
                   pretrained_weights=pretrained_weights, fork_at=tuple(fork_at), pause_at=pause_at,
                   shared=shared, attempt=attempt, drill=drill)
    return fit_torch(
        _trial_worker, job.to_config(), name=run_name or trial.name(),
        storage_path=str(storage) if is_uri(storage or "") else str(Path(storage or out_dir.parent / "ray").resolve()),
        workers=res.workers, use_gpu=res.gpus_per_worker > 0,
        resources_per_worker={"CPU": res.cpus_per_worker,
                              **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        placement_strategy=cfg.placement_strategy,
        keep_checkpoints=layout.TRAIN_CHECKPOINTS_KEPT,
        # a dead worker restarts the whole group, which resumes from the last checkpoint
        max_failures=res.max_failures, callbacks=callbacks)


def _pretrain_worker(config: dict[str, Any]) -> None:
    """One worker of the pre-training job: train its shard; rank 0 hands the weights back as a checkpoint."""
    import ray.train
    import ray.train.torch

    from study.train.pretrain import save_checkpoint, train_classifier

    state, record = train_classifier(PretrainConfig(**config["pretrain"]), backbone=config["backbone"],
                                     data_dir=config["data_dir"], device=ray.train.torch.get_device())
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_checkpoint(Path(tmp) / "pretrain.pt", state, record)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(record.to_dict(), checkpoint=checkpoint)  # a barrier: every rank calls it


def pretrain_on_ray(pcfg: PretrainConfig, *, backbone: str, data_dir: Path,
                    storage: str | None = None) -> tuple[dict[str, Any], PretrainRecord]:
    """Pre-train on `pcfg.workers` Ray Train workers, each with `pcfg.gpus` GPUs; returns
    (backbone state dict, its record). Rank 0 hands the weights back through Ray Train's
    checkpoint under `storage` (a URI or a folder every node reaches; default a temporary folder,
    which serves one machine); each job is a new run there."""
    import dataclasses
    import uuid

    from models.weight_files import load_state_file

    start_ray(cpus=pcfg.workers + 1, dashboard=False)
    with tempfile.TemporaryDirectory(prefix="pretrain_") as tmp:
        result = fit_torch(_pretrain_worker, {"pretrain": dataclasses.asdict(pcfg), "backbone": backbone,
                                              "data_dir": str(data_dir)},
                           name=f"pretrain-{uuid.uuid4().hex[:8]}", storage_path=storage or tmp,
                           workers=pcfg.workers, use_gpu=pcfg.gpus > 0,
                           resources_per_worker={"CPU": 1, **({"GPU": pcfg.gpus} if pcfg.gpus else {})})
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as d:
            saved = load_state_file(Path(d) / "pretrain.pt")
    return saved["backbone"], PretrainRecord(**saved["meta"])
