"""One trial as a Ray Train V2 data-parallel job: `TorchTrainer(...).fit()` around `train_trial`.

Each worker runs `study.trial.train_trial` with DDP (gloo on CPU, NCCL on GPU via
`ray.train.torch.prepare_model`); every evaluation point becomes one `ray.train.report` with rank
0's checkpoint attached, so Ray Train keeps the trial's checkpoints (`num_to_keep`) and a restarted
worker group resumes from `ray.train.get_checkpoint()` (RAY_NOTES §4).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from study.config import StudyConfig, study_from_dict, to_dict
from study.trial import Trial, split_paths, train_trial

# Ray Train polls its workers this often; its 2 s default adds seconds to every short trial.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = study_from_dict(config["study"])
    ctx = ray.train.get_context()
    with tempfile.TemporaryDirectory() as scratch:
        resume_from = None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:  # a restarted worker group: every rank resumes from Train's copy
            with checkpoint.as_directory() as d:
                resume_from = shutil.copy(Path(d) / "checkpoint.pt", Path(scratch) / "resume.pt")

        def report(row: dict[str, Any], saved: Path | None) -> None:
            with tempfile.TemporaryDirectory() as d:
                attached = None
                if saved is not None:
                    shutil.copy(saved, Path(d) / "checkpoint.pt")
                    attached = ray.train.Checkpoint.from_directory(d)
                ray.train.report(row, checkpoint=attached)  # a barrier: every rank calls it

        train_trial(cfg, Trial(**config["trial"]), out_dir=config["out_dir"], data_root=config["data_root"],
                    pretrained_weights=config["pretrained_weights"], rank=ctx.get_world_rank(),
                    world_size=ctx.get_world_size(), wrap=ray.train.torch.prepare_model,
                    report=report, resume_from=resume_from, fork_at=config["fork_at"],
                    device=ray.train.torch.get_device())


def run_trial_on_ray(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                     pretrained_weights: str | None = None, storage: str | Path | None = None,
                     keep_checkpoints: int = 2, fork_at: list[int] | tuple[int, ...] = (),
                     callbacks: list[Any] | None = None) -> Any:
    """Run one trial on `cfg.resources.workers` Ray Train workers; returns Ray's Result.

    `callbacks` go to Ray Train's RunConfig (the study passes Tune's TuneReportCallback); the
    run is named after the trial, so a restarted trial finds its own Train snapshot.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    out_dir, data_root = Path(out_dir).resolve(), Path(data_root).resolve()  # workers chdir
    split_paths(cfg, data_root)  # make the synthetic set once, before the workers race to
    if not ray.is_initialized():
        ray.init(num_cpus=max(os.cpu_count() or 1, cfg.resources.workers * cfg.resources.cpus_per_worker))
    res = cfg.resources
    return TorchTrainer(
        _worker,
        train_loop_config={"study": to_dict(cfg), "trial": dataclasses.asdict(trial),
                           "out_dir": str(out_dir), "data_root": str(data_root),
                           "pretrained_weights": pretrained_weights, "fork_at": list(fork_at)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker,
                                  **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}),
        run_config=ray.train.RunConfig(
            name=trial.name(), storage_path=str(Path(storage or out_dir.parent / "ray").resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            # a dead worker restarts the whole group, which resumes from the last checkpoint
            failure_config=ray.train.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=callbacks or []),
    ).fit()
