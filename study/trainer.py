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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.config import StudyConfig, study_from_dict, to_dict
from study.storage import TRIAL_FILES, Store, is_uri, pull_files, pusher
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

        out_dir, weights = config["out_dir"], config["pretrained_weights"]
        sync: Callable[[Path], None] = lambda _path: None
        if config["store"] is not None:  # shared storage is a URI: this node works in `scratch`
            store_root, rel, weights_rel = config["store"]
            store, out_dir = Store(store_root), Path(scratch) / "trial"
            pull_files(store, rel, out_dir, TRIAL_FILES)
            if weights_rel is not None:
                weights = str(Path(scratch) / "pretrained.pt")
                store.get(weights_rel, weights)
            sync = pusher(store, out_dir, rel)

        def report(row: dict[str, Any], saved: Path | None) -> None:
            with tempfile.TemporaryDirectory() as d:
                attached = None
                if saved is not None:
                    shutil.copy(saved, Path(d) / "checkpoint.pt")
                    attached = ray.train.Checkpoint.from_directory(d)
                ray.train.report(row, checkpoint=attached)  # a barrier: every rank calls it

        train_trial(cfg, Trial(**config["trial"]), out_dir=out_dir, data_root=config["data_root"],
                    pretrained_weights=weights, rank=ctx.get_world_rank(),
                    world_size=ctx.get_world_size(), wrap=ray.train.torch.prepare_model,
                    report=report, resume_from=resume_from, fork_at=config["fork_at"],
                    device=ray.train.torch.get_device(), sync=sync)


def run_trial_on_ray(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                     pretrained_weights: str | None = None, storage: str | Path | None = None,
                     keep_checkpoints: int = 2, fork_at: list[int] | tuple[int, ...] = (),
                     callbacks: list[Any] | None = None,
                     store: tuple[str, str, str | None] | None = None) -> Any:
    """Run one trial on `cfg.resources.workers` Ray Train workers; returns Ray's Result.

    `storage` (a path or URI) holds Ray Train's checkpoints. `store` is set when the study's
    storage is a URI (study/storage.py): (storage URI, the trial's folder in it, the pre-trained
    weights in it or None); every worker then pulls the trial's files into its own scratch folder
    and rank 0 pushes what it writes, instead of using `out_dir`.

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
                           "pretrained_weights": pretrained_weights, "fork_at": list(fork_at),
                           "store": store},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker,
                                  **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}),
        run_config=ray.train.RunConfig(
            name=trial.name(),
            storage_path=str(storage) if is_uri(storage or "") else str(Path(storage or out_dir.parent / "ray").resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            # a dead worker restarts the whole group, which resumes from the last checkpoint
            failure_config=ray.train.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=callbacks or []),
    ).fit()
