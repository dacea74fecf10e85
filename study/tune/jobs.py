"""Ray Train jobs: one trial on data-parallel workers (`run_trial_on_ray`), and the backbone's
pre-training on them (`pretrain_on_ray`).

A trial's workers each run `study.train.loop.train_trial` with DDP (`ray.train.torch.prepare_model`);
every evaluation becomes one `ray.train.report` with rank 0's checkpoint attached, so Ray Train
keeps the trial's last checkpoints and a restarted worker group resumes from
`ray.train.get_checkpoint()`. What the workers need crosses the Ray boundary as a `TrialJob`,
turned into plain data and rebuilt on each worker's first line.
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
from study.train.loop import Sync, train_trial
from study.tune.launch import fit_torch, start_ray
from study.tune.storage import Store, is_uri, node_dir, pull_files, pusher


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

    def to_config(self) -> dict[str, Any]:
        """Plain data, Ray Train's `train_loop_config`."""
        return {"study": to_dict(self.study), "trial": self.trial.to_dict(), "out_dir": self.out_dir,
                "data_root": self.data_root, "pretrained_weights": self.pretrained_weights,
                "fork_at": list(self.fork_at), "pause_at": self.pause_at,
                "shared": None if self.shared is None else vars(self.shared).copy()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialJob:
        shared = config["shared"]
        return cls(study=study_from_dict(config["study"]), trial=Trial.from_dict(config["trial"]),
                   out_dir=config["out_dir"], data_root=config["data_root"],
                   pretrained_weights=config["pretrained_weights"], fork_at=tuple(config["fork_at"]),
                   pause_at=config["pause_at"], shared=None if shared is None else SharedTrial(**shared))


def _trial_worker(config: dict[str, Any]) -> None:
    """One worker of a trial's job (see the module docstring)."""
    import ray.train
    import ray.train.torch

    job = TrialJob.from_config(config)
    ctx = ray.train.get_context()
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
            sync = pusher(store, out_dir, job.shared.trial_dir)

        def report(row: dict[str, Any], saved: Path | None) -> None:
            with tempfile.TemporaryDirectory() as d:
                attached = None
                if saved is not None:
                    shutil.copy(saved, Path(d) / layout.CHECKPOINT)
                    shutil.copy(saved.parent / layout.CHECKSUMS, Path(d) / layout.CHECKSUMS)
                    attached = ray.train.Checkpoint.from_directory(d)
                ray.train.report(row, checkpoint=attached)  # a barrier: every rank calls it

        train_trial(job.study, job.trial, out_dir=out_dir, data_root=job.data_root,
                    pretrained_weights=weights, rank=ctx.get_world_rank(),
                    world_size=ctx.get_world_size(), wrap=ray.train.torch.prepare_model,
                    report=report, resume_from=resume_from, fork_at=job.fork_at, pause_at=job.pause_at,
                    device=ray.train.torch.get_device(), sync=sync)


def run_trial_on_ray(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                     pretrained_weights: str | None = None, storage: str | Path | None = None,
                     fork_at: Collection[int] = (), pause_at: int | None = None,
                     run_name: str | None = None, callbacks: list[Any] | None = None,
                     shared: SharedTrial | None = None) -> Any:
    """Run one trial on `cfg.resources.workers` Ray Train workers; returns Ray's Result.

    `storage` (a path or URI; default beside `out_dir`) holds Ray Train's checkpoints. With
    `shared` (the study's storage is a URI) every worker pulls the trial's files into its own
    scratch folder and rank 0 pushes what it writes, instead of using `out_dir`. `callbacks` go
    to Ray Train's RunConfig (the study passes Tune's TuneReportCallback); the run is named
    `run_name` (default: the trial's name), so a restarted trial finds its own Train snapshot and
    the next segment of a halving trunk (`pause_at`) starts a run of its own, from the trial's
    checkpoint.
    """
    out_dir, data_root = Path(out_dir).resolve(), Path(data_root).resolve()  # workers chdir
    split_paths(cfg, data_root)  # make the synthetic set once, before the workers race to
    res = cfg.resources
    start_ray(cpus=res.workers * res.cpus_per_worker)
    job = TrialJob(study=cfg, trial=trial, out_dir=str(out_dir), data_root=str(data_root),
                   pretrained_weights=pretrained_weights, fork_at=tuple(fork_at), pause_at=pause_at,
                   shared=shared)
    return fit_torch(
        _trial_worker, job.to_config(), name=run_name or trial.name(),
        storage_path=str(storage) if is_uri(storage or "") else str(Path(storage or out_dir.parent / "ray").resolve()),
        workers=res.workers, use_gpu=res.gpus_per_worker > 0,
        resources_per_worker={"CPU": res.cpus_per_worker,
                              **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        keep_checkpoints=layout.TRAIN_CHECKPOINTS_KEPT,
        # a dead worker restarts the whole group, which resumes from the last checkpoint
        max_failures=res.max_failures, callbacks=callbacks)


def _pretrain_worker(config: dict[str, Any]) -> None:
    """One worker of the pre-training job: train its shard; rank 0 hands the weights back as a checkpoint."""
    import ray.train
    import ray.train.torch

    from study.train.pretrain import save_checkpoint, train_classifier

    ctx = ray.train.get_context()
    state, meta = train_classifier(PretrainConfig(**config["pretrain"]), backbone=config["backbone"],
                                   data_dir=config["data_dir"],
                                   rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                                   wrap=ray.train.torch.prepare_model)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ctx.get_world_rank() == 0:
            save_checkpoint(Path(tmp) / "pretrain.pt", state, meta)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(meta, checkpoint=checkpoint)  # a barrier: every rank calls it


def pretrain_on_ray(pcfg: PretrainConfig, *, backbone: str, data_dir: Path,
                    use_gpu: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pre-train on `pcfg.workers` Ray Train workers; returns (backbone state dict, metadata)."""
    import dataclasses

    from models.init import load_state_file

    start_ray(cpus=pcfg.workers + 1, dashboard=False)
    with tempfile.TemporaryDirectory(prefix="pretrain_") as storage:
        result = fit_torch(_pretrain_worker, {"pretrain": dataclasses.asdict(pcfg), "backbone": backbone,
                                              "data_dir": str(data_dir)},
                           name="pretrain", storage_path=storage, workers=pcfg.workers, use_gpu=use_gpu)
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as d:
            saved = load_state_file(Path(d) / "pretrain.pt")
    return saved["backbone"], saved["meta"]
