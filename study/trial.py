"""One trial: one training run of one configuration (init, schedule, training-set size, LR, seed).

`train_trial` is the loop every worker runs (rank r of `world_size` trains its slice of each
global batch); it knows nothing of Ray: the Ray Train wrapper (issue #4, next) passes a `wrap`
for DDP and a `report` that forwards to `ray.train.report`. Run with `world_size=1` it is a plain
single-process trial, which is what the tests and benchmarks use.

- The LR follows `study.schedule` at the trial's batch size; data order and flips are pure
  functions of (seed, iteration), so a run resumed from a checkpoint at iteration k continues
  exactly as an uninterrupted run would.
- At every `eval_period` and at the end: COCO bbox and mask AP on the val set, a checkpoint
  (model, optimizer, iteration; loadable with `weights_only=True`), and a row appended to the
  trial's own `metrics.jsonl` (durable: Tune can drop pre-crash rows on restore).
- Samples seen count images, instances and pixels, pre-training included for the pretrained arm.
- A non-finite loss stops the trial with status 'diverged' and the iteration, instead of
  training on NaNs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from models.init import init_scratch, load_backbone, load_state_file
from models.mask_rcnn import build_mask_rcnn
from models.norms import convert_sync_batchnorm, parameter_groups
from study.config import StudyConfig
from study.data.coco import InstanceDataset, collate, load_coco
from study.data.sampling import IterationBatchSampler, nested_subset, subset_size
from study.data.synthetic import write_synthetic
from study.engine import coco_metrics, predict, train_step
from study.ranks import gather_over_ranks, sum_over_ranks
from study.schedule import lr_at, schedule_for

# Columns of a metric row that measure the machine, not the training (they differ between equal runs).
TIMING_COLUMNS = frozenset({"images_per_s", "eval_s"})


@dataclass(frozen=True)
class Trial:
    """One cell of the grid with one LR: what a trial trains."""

    init: Literal["scratch", "pretrained"]
    schedule: float
    base_lr: float
    seed: int
    train_images: int | Literal["full"] | None = "full"
    data_fraction: float | None = None

    def name(self) -> str:
        size = f"frac{self.data_fraction:g}" if self.data_fraction is not None else f"n{self.train_images}"
        return f"{self.init}_{self.schedule:g}x_{size}_lr{self.base_lr:g}_s{self.seed}"


def trial_device(cfg: StudyConfig) -> str:
    """Where a one-process trial trains: 'cuda' when the study gives workers GPUs, else 'cpu'."""
    if cfg.resources.gpus_per_worker <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("resources.gpus_per_worker > 0 but this process sees no CUDA device "
                           "(torch.cuda.is_available() is False); set gpus_per_worker: 0 for a CPU run")
    return "cuda"


def split_paths(cfg: StudyConfig, data_root: str | Path) -> tuple[tuple[str, str], tuple[str, str]]:
    """((train annotations, images), (val annotations, images)); the synthetic set is made if missing."""
    if cfg.data.source == "synthetic":
        p = write_synthetic(Path(data_root) / "synthetic", cfg.data.synthetic)
        return (str(p.train_annotations), str(p.train_images)), (str(p.val_annotations), str(p.val_images))
    assert cfg.data.train is not None and cfg.data.val is not None
    return ((cfg.data.train.annotations, cfg.data.train.images),
            (cfg.data.val.annotations, cfg.data.val.images))


def trial_datasets(cfg: StudyConfig, trial: Trial, data_root: str | Path
                   ) -> tuple[InstanceDataset, InstanceDataset]:
    """(train subset resized for training, val at original size for COCOeval)."""
    (train_ann, train_img), (val_ann, val_img) = split_paths(cfg, data_root)
    train_split = load_coco(train_ann, train_img, filter_empty=cfg.data.filter_empty)
    size = subset_size(len(train_split.image_ids), train_images=trial.train_images,
                       data_fraction=trial.data_fraction, source=train_ann)
    ids = nested_subset(train_split.image_ids, size, cfg.data.subset_seed)
    train = InstanceDataset(train_split, ids, min_size=cfg.model.min_size, max_size=cfg.model.max_size)
    return train, InstanceDataset(load_coco(val_ann, val_img))


def train_trial(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                pretrained_weights: str | None = None, rank: int = 0, world_size: int = 1,
                wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
                report: Callable[[dict[str, Any], Path | None], None] = lambda _m, _c: None,
                resume_from: str | Path | None = None, stop_at: int | None = None,
                fork_at: Collection[int] = (), device: torch.device | str = "cpu",
                sync: Callable[[Path], None] = lambda _path: None) -> dict[str, Any]:
    """Train (or resume) one trial; returns its last metrics row. See the module docstring.

    It resumes from `resume_from`, else from `out_dir/checkpoint.pt` if there is one. `stop_at`
    ends the run early at that iteration (for tests of resumption). At each iteration in
    `fork_at` it also writes `out_dir/fork_<iteration>.pt`, from which `start_branch` starts a
    shorter schedule (see study/forking.py). Rank 0 calls `sync(path)` after each file it writes
    (study/storage.py pushes it to shared storage).

    Each evaluation appends its row to the metric log first and writes the checkpoint second; a
    (re)start drops the log's rows past the checkpoint's iteration (or all of them without a
    checkpoint: a crash between the two), so the log never misses nor repeats an iteration.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    solver = cfg.solver
    sched = schedule_for(trial.schedule, solver)
    batch = solver.ims_per_batch
    if batch % world_size:
        raise ValueError(f"solver.ims_per_batch {batch} is not divisible by {world_size} workers")
    train, val = trial_datasets(cfg, trial, data_root)
    device = torch.device(device)
    cuda = device.type == "cuda"

    torch.manual_seed(trial.seed)  # the same random init in both arms
    model = build_mask_rcnn(backbone=cfg.model.backbone, norm=cfg.model.norm,
                            num_classes=train.split.num_classes, profile=cfg.model.profile,
                            min_size=cfg.model.min_size, max_size=cfg.model.max_size)
    init_scratch(model)
    pre_meta: dict[str, Any] = {}
    if trial.init == "pretrained":
        if pretrained_weights is None:
            raise ValueError("init 'pretrained' needs pretrained weights (model.pretrained_weights, "
                             "or a `study pretrain` checkpoint)")
        loaded = load_backbone(model, pretrained_weights)
        pre_meta = loaded.meta
        if rank == 0:
            print(loaded.summary())
    model.to(device)  # before the optimizer state is loaded: it follows its parameters' device
    optimizer = torch.optim.SGD(parameter_groups(model, weight_decay=solver.weight_decay,
                                                 weight_decay_norm=solver.weight_decay_norm),
                                lr=trial.base_lr, momentum=solver.momentum)
    start_iter, counts = 0, {"images": 0, "instances": 0, "pixels": 0}
    window: dict[str, float] = {}  # loss sums since the last evaluation (kept in checkpoints)
    n_window = 0
    ckpt_path = out_dir / "checkpoint.pt"
    resume = Path(resume_from) if resume_from is not None else ckpt_path
    if resume.is_file():
        state = load_state_file(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_iter, counts = state["iteration"], state["counts"]
        # The loss sums since the last evaluation, summed over ranks: rank 0 carries them.
        window = {k: (v if rank == 0 else 0.0) for k, v in state.get("window", {}).items()}
        n_window = int(state.get("n_window", 0))
        if rank < len(state["rng"]):  # RPN/RoI sampling draws from it
            torch.set_rng_state(state["rng"][rank])
        cuda_rng = state.get("cuda_rng", [])
        if rank < len(cuda_rng) and cuda:
            torch.cuda.set_rng_state(cuda_rng[rank], device)
    if rank == 0 and _truncate_metrics(out_dir, start_iter):  # rows the checkpoint is behind
        sync(out_dir / "metrics.jsonl")
    end = sched.max_iter if stop_at is None else min(stop_at, sched.max_iter)
    if start_iter >= end:  # already trained this far: report where it stands, train nothing
        done = read_metrics(out_dir)
        row = done[-1] if done else {}
        report(row, None)
        return row
    if start_iter and rank == 0:
        fork = out_dir / "fork.json"
        forked = fork.is_file() and json.loads(fork.read_text())["iteration"] == start_iter
        print(f"{trial.name()}: " + (f"starting from its trunk's fork point, iteration {start_iter}" if forked
                                     else f"resuming from the checkpoint of iteration {start_iter}"), flush=True)
    if world_size > 1:  # SyncBatchNorm before DDP; refused off the GPU (the config refuses it too)
        model = convert_sync_batchnorm(model, cfg.model.norm, device)
    net = wrap(model)
    lr_solver = dataclasses.replace(solver, base_lr=trial.base_lr)
    sampler = IterationBatchSampler(len(train), batch, seed=trial.seed, start_iter=start_iter,
                                    max_iter=end, rank=rank, world_size=world_size)
    # Its own generator: creating the iterator must not draw from the global RNG, which the
    # RPN/RoI samplers use and the checkpoint restores.
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.loader_workers, pin_memory=cuda,
                        generator=torch.Generator().manual_seed(trial.seed))

    def save(path: Path, it: int) -> Path | None:
        """Rank 0 writes the full training state (atomically); every rank takes part."""
        rng = gather_over_ranks([torch.get_rng_state()], world_size)  # one state per rank
        cuda_rng = gather_over_ranks([torch.cuda.get_rng_state(device)], world_size) if cuda else []
        window_sums = sum_over_ranks(window, world_size)
        if rank != 0:
            return None
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "iteration": it, "counts": counts, "rng": rng, "cuda_rng": cuda_rng,
                    "window": window_sums, "n_window": n_window}, tmp)
        os.replace(tmp, path)
        sync(path)
        return path

    row: dict[str, Any] = {}
    tick, n_timed = time.perf_counter(), 0
    net.train()
    for it, (images, targets) in enumerate(loader, start=start_iter + 1):
        lr = lr_at(it - 1, sched, lr_solver)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        losses = train_step(net, images, targets, optimizer, clip_grad_norm=solver.clip_grad_norm,
                            autocast=cuda)
        diverged = not math.isfinite(losses["loss"])  # the sum: non-finite if any part is
        local = {"images": len(images), "instances": sum(len(t["labels"]) for t in targets),
                 "pixels": sum(im.shape[1] * im.shape[2] for im in images)}
        summed = sum_over_ranks({**local, "diverged": float(diverged)}, world_size)
        for k in counts:
            counts[k] += round(summed[k])
        for k, v in losses.items():
            window[k] = window.get(k, 0.0) + v
        n_window += 1
        n_timed += 1
        if summed["diverged"] > 0:
            # NaN metrics, not missing ones: Tune stops the whole study on a result without its metric
            row = {"iteration": it, "status": "diverged", "lr": lr, **trial_row(trial),
                   **{k: float("nan") for k in (*losses, "bbox_AP", "segm_AP")}, "images_seen": counts["images"]}
            _log(out_dir, row, rank, sync)
            report(row, None)
            return row
        if it % solver.eval_period == 0 or it == sched.max_iter or it == end:
            mean_losses = {k: v / (n_window * world_size)
                           for k, v in sum_over_ranks(window, world_size).items()}
            now = time.perf_counter()
            shard = list(range(rank, len(val), world_size))
            results = gather_over_ranks(predict(model, val, indices=shard, device=device), world_size)
            metrics = coco_metrics(val, results) if rank == 0 else {}
            metrics["eval_s"] = time.perf_counter() - now  # prediction and COCOeval
            row = {"iteration": it, "status": "finished" if it == sched.max_iter else "running",
                   "lr": lr, **trial_row(trial), **mean_losses, **metrics,
                   "images_per_s": n_timed * batch / (now - tick),
                   "images_seen": counts["images"], "instances_seen": counts["instances"],
                   "pixels_seen": counts["pixels"],
                   "pretrain_images_seen": pre_meta.get("images_seen", 0),
                   "pretrain_instances_seen": pre_meta.get("instances_seen", 0),
                   "pretrain_pixels_seen": pre_meta.get("pixels_seen", 0)}
            window, n_window = {}, 0
            _log(out_dir, row, rank, sync)
            saved = save(ckpt_path, it)
            report(row, saved)
            tick, n_timed = time.perf_counter(), 0
        if it in fork_at:
            save(out_dir / f"fork_{it}.pt", it)
    return row


def trial_row(trial: Trial) -> dict[str, Any]:
    return {"init": trial.init, "schedule": trial.schedule, "base_lr": trial.base_lr, "seed": trial.seed,
            "train_images": trial.train_images, "data_fraction": trial.data_fraction}


def _log(out_dir: Path, row: dict[str, Any], rank: int, sync: Callable[[Path], None]) -> None:
    """Append one row to the trial's durable metric log (rank 0 only), flushed to disk."""
    if rank != 0:
        return
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    sync(out_dir / "metrics.jsonl")


def _truncate_metrics(out_dir: Path, iteration: int) -> bool:
    """Drop the metric rows past `iteration` (the checkpoint a run resumes from); True if any."""
    rows = read_metrics(out_dir)
    kept = [r for r in rows if r["iteration"] <= iteration]
    if len(kept) == len(rows):
        return False
    write_metrics(out_dir, kept)
    return True


def write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the trial's metric log with `rows`, atomically."""
    tmp = out_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out_dir / "metrics.jsonl")


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
