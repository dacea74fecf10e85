"""One trial: one training run of one configuration (init, schedule, training-set size, LR, seed).

`train_trial` is the loop every worker runs. In a process group (a Ray Train job, `study.tune.jobs`,
one worker included) each rank trains its slice of every global batch under DDP, and whatever the
ranks share goes through `study.train.collectives`, so one GPU runs the code that eight do. Without
a process group it is a plain single-process trial (tests, benchmarks, one-worker CPU trials). It
knows nothing of Ray: results leave through `report`, files through `sync`.

- The LR follows `study.plan.schedule` at the trial's batch size; data order and flips are pure
  functions of (seed, iteration), so a run resumed from a checkpoint at iteration k continues
  exactly as an uninterrupted run would (`study.train.state`).
- The model's init is a function of the seed alone (the same in both arms, and on every rank);
  the RPN and RoI samplers draw from a stream seeded by (seed, rank), so the ranks do not sample
  alike; a checkpoint keeps every rank's stream.
- Every `log_period` iterations: a progress row to `report` (losses since the last row, LR,
  images/s; AP NaN, as it is no evaluation), not logged.
- At every `eval_period`, at the end and in the final phase every `final_eval_period`
  (`study.plan.schedule.evaluation_points`): COCO bbox and mask AP on the val set, a row appended to
  the trial's own metric log (durable: Tune can drop pre-crash rows on restore), then a checkpoint.
  Checkpoints also every `checkpoint_period` iterations, so a preempted trial loses at most that.
  A fork checkpoint at the same iteration is written before the checkpoint, so that a run resumed
  from a checkpoint has written every fork point up to it.
- Samples seen count images, instances and pixels, pre-training included for the pretrained arm.
- A non-finite loss on any rank stops the trial on every rank, agreed before `backward`
  (`study.train.steps.train_step`), with status 'diverged' and the iteration, instead of
  training on NaNs or leaving the other ranks waiting in DDP's all-reduce.
- `fence()` runs before each write to the trial's folder; it raises when another attempt of the
  trial has taken the folder over (`study.tune.attempt`), which stops this one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.init import init_scratch, load_backbone
from models.norms import convert_sync_batchnorm
from study import layout
from study.layout import MetricRow
from study.config import StudyConfig
from study.data.coco import InstanceDataset, collate
from study.data.sampling import IterationBatchSampler
from study.plan.schedule import Schedule, evaluation_points, lr_at, schedule_for
from study.plan.trials import Trial
from study.train.build import build_detector, build_sgd, trial_datasets
from study.train.precision import use_bf16
from study.train.pretrain import PretrainRecord
from study.train import collectives
from study.train.state import Progress, drop_previous, restore_state, save_state, usable_checkpoint
from study.train.steps import coco_metrics, predict, train_step

# Columns of a metric row that measure the machine, not the training (they differ between equal runs).
TIMING_COLUMNS = frozenset({"images_per_s", "eval_s"})

Report = Callable[[dict[str, Any], Path | None], None]
Sync = Callable[[Path], None]
Fence = Callable[[], None]


@dataclass(frozen=True)
class NanDrill:
    """A fire drill for divergence handling: at `iteration`, rank `rank`'s images are NaN (so is
    its loss). The trial must end 'diverged' there on every rank, with no rank left waiting."""

    iteration: int
    rank: int = 0


def sampling_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s RPN/RoI sampling stream in a trial of seed `seed`."""
    return int(np.random.SeedSequence([seed, rank, 0x5A3D]).generate_state(1)[0])


@dataclass
class Setup:
    """Everything a trial trains with, built before its first iteration."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: InstanceDataset
    val: InstanceDataset
    schedule: Schedule
    pretrain: PretrainRecord | None  # what the pre-training saw (None: scratch, or weights made elsewhere)
    device: torch.device


def build_setup(cfg: StudyConfig, trial: Trial, *, data_root: str | Path, pretrained_weights: str | None,
                device: torch.device) -> Setup:
    """The data, the detector (scratch init, then the pre-trained backbone for that arm) and SGD;
    then this rank's sampling stream is seeded (`sampling_seed`)."""
    rank = collectives.rank()
    solver = cfg.solver
    schedule = schedule_for(trial.schedule, solver)
    train, val = trial_datasets(cfg, trial.size, data_root)
    torch.manual_seed(trial.seed)  # the same random init in both arms
    model = build_detector(cfg, train.split.num_classes)
    init_scratch(model)
    record = None
    if trial.init == "pretrained":
        if pretrained_weights is None:
            raise ValueError("init 'pretrained' needs pretrained weights (model.pretrained_weights, "
                             "or a `study pretrain` checkpoint)")
        loaded = load_backbone(model, pretrained_weights, allow_fresh_norms=cfg.model.allow_fresh_norms)
        record = PretrainRecord.from_meta(loaded.meta)
        if rank == 0:
            print(loaded.summary())
    torch.manual_seed(sampling_seed(trial.seed, rank))  # what the samplers draw from (CUDA's too)
    model.to(device)  # before the optimizer state is loaded: it follows its parameters' device
    optimizer = build_sgd(model, lr=trial.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay,
                          weight_decay_norm=solver.weight_decay_norm)
    return Setup(model, optimizer, train, val, schedule, record, device)


def restore(setup: Setup, out_dir: Path, resume_from: Path | None, *, sync: Sync) -> Progress:
    """Resume from the newest checkpoint that is intact (`study.train.state.usable_checkpoint`:
    `resume_from`, else the trial's own); drop the metric rows past its iteration (or all of them
    without one: a crash between a row and its checkpoint) and a torn last row, so the log never
    misses nor repeats an iteration."""
    rank = collectives.rank()
    say = (lambda text: print(f"{out_dir.name}: {text}", flush=True)) if rank == 0 else (lambda _t: None)
    progress = Progress()
    path = usable_checkpoint(out_dir, resume_from, say=say)
    if path is not None:
        progress = restore_state(path, setup.model, setup.optimizer, device=setup.device)
    elif rank == 0 and (out_dir / layout.FORK_RECORD).is_file():  # a branch that lost its fork state
        (out_dir / layout.FORK_RECORD).unlink()  # trains from 0: the same run, as a separate one
        sync(out_dir / layout.FORK_RECORD)
    if rank == 0 and layout.truncate_metrics(out_dir, progress.iteration):
        sync(out_dir / layout.METRICS)
    return progress


def _announce(trial: Trial, out_dir: Path, iteration: int) -> None:
    """Say where a (re)started trial continues from: its trunk's fork point, or its checkpoint."""
    record = out_dir / layout.FORK_RECORD
    forked = record.is_file() and json.loads(record.read_text())["iteration"] == iteration
    print(f"{trial.name()}: " + (f"starting from its trunk's fork point, iteration {iteration}" if forked
                                 else f"resuming from the checkpoint of iteration {iteration}"), flush=True)


def evaluate_row(setup: Setup, trial: Trial, it: int, lr: float, losses: dict[str, float],
                 progress: Progress, *, images_per_s: float, bf16: bool) -> dict[str, Any]:
    """The metric row of an evaluation at iteration `it`: losses, COCO AP (every rank predicts its
    shard of the val set, in the trial's precision; rank 0 evaluates), throughput and samples seen."""
    now = time.perf_counter()
    rank = collectives.rank()
    shard = list(range(rank, len(setup.val), collectives.world_size()))
    results = collectives.gather_over_ranks(predict(setup.model, setup.val, indices=shard, device=setup.device,
                                                    bf16=bf16))
    metrics = coco_metrics(setup.val, results) if rank == 0 else {}
    metrics["eval_s"] = time.perf_counter() - now  # prediction and COCOeval
    pre = setup.pretrain
    return MetricRow(it, "finished" if it == setup.schedule.max_iter else "running", trial.columns(), lr=lr,
                     losses=losses, metrics=metrics, images_per_s=images_per_s,
                     seen={**_seen(progress), "pretrain_images_seen": pre.images_seen if pre else 0,
                           "pretrain_instances_seen": pre.instances_seen if pre else 0,
                           "pretrain_pixels_seen": pre.pixels_seen if pre else 0}).as_dict()


def _seen(progress: Progress) -> dict[str, int]:
    counts = progress.counts
    return {"images_seen": counts["images"], "instances_seen": counts["instances"], "pixels_seen": counts["pixels"]}


def progress_row(trial: Trial, it: int, lr: float, losses: dict[str, float], progress: Progress, *,
                 images_per_s: float) -> dict[str, Any]:
    """A progress report at iteration `it` (status 'training'): the mean losses since the last
    report over all ranks, LR, throughput, samples seen; AP NaN (Tune needs the metric in every
    result; TensorBoard leaves NaN out, so its AP curves hold evaluations only)."""
    return MetricRow(it, "training", trial.columns(), lr=lr, losses=losses,
                     metrics={"bbox_AP": float("nan"), "segm_AP": float("nan")}, images_per_s=images_per_s,
                     seen=_seen(progress)).as_dict()


def train_trial(cfg: StudyConfig, trial: Trial, *, out_dir: str | Path, data_root: str | Path,
                pretrained_weights: str | None = None,
                report: Report = lambda _m, _c: None,
                resume_from: str | Path | None = None, stop_at: int | None = None,
                pause_at: int | None = None, fork_at: Collection[int] = (),
                device: torch.device | str = "cpu", sync: Sync = lambda _path: None,
                fence: Fence = lambda: None, drill: NanDrill | None = None) -> dict[str, Any]:
    """Train (or resume) one trial; returns its last metrics row. See the module docstring.

    It resumes from `resume_from`, else from the checkpoint in `out_dir` if there is one.
    `stop_at` ends the run early at that iteration, with an evaluation (for tests of resumption).
    `pause_at` ends it there with a checkpoint and no evaluation unless one falls due, so that a
    later call continues exactly as an uninterrupted run (a halving trunk's segment); it reports
    a 'paused' row (the last evaluation's AP) that is not logged. At each iteration in `fork_at`
    it also writes a fork checkpoint, from which `study.tune.forking.start_branch` starts a
    shorter schedule. Rank 0 calls `fence()` before and `sync(path)` after each file it writes
    (shared storage pushes it). `drill` plants a NaN (`NanDrill`).
    """
    if stop_at is not None and pause_at is not None:
        raise ValueError("give stop_at or pause_at, not both")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch, ranks = cfg.solver.ims_per_batch, collectives.world_size()
    if batch % ranks:
        raise ValueError(f"solver.ims_per_batch {batch} is not divisible by {ranks} workers")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the CUDA RNG follow the current device
    setup = build_setup(cfg, trial, data_root=data_root, pretrained_weights=pretrained_weights, device=device)
    progress = restore(setup, out_dir, Path(resume_from) if resume_from is not None else None, sync=sync)
    until = stop_at if stop_at is not None else pause_at
    end = setup.schedule.max_iter if until is None else min(until, setup.schedule.max_iter)
    pause = pause_at is not None and end < setup.schedule.max_iter
    if progress.iteration >= end:  # already trained this far: report where it stands, train nothing
        row = paused_row(trial, out_dir, progress.iteration) if pause else _last_row(out_dir)
        report(row, None)
        return row
    if collectives.rank() == 0 and collectives.active():
        print(f"{trial.name()}: process group {collectives.describe()}", flush=True)
    if progress.iteration and collectives.rank() == 0:
        _announce(trial, out_dir, progress.iteration)
    if collectives.active():  # SyncBatchNorm before DDP; refused off the GPU (the config refuses it too)
        setup.model = convert_sync_batchnorm(setup.model, cfg.model.norm, device)
    net = collectives.data_parallel(setup.model, device)
    return _loop(cfg, trial, setup, progress, net, out_dir=out_dir, end=end, pause=pause, report=report,
                 fork_at=fork_at, sync=sync, fence=fence, drill=drill)


def _last_row(out_dir: Path) -> dict[str, Any]:
    done = layout.read_metrics(out_dir)
    return done[-1] if done else {}


def paused_row(trial: Trial, out_dir: Path, iteration: int) -> dict[str, Any]:
    """What a paused segment reports to Tune (not logged): where it paused, and the AP of its
    last evaluation (NaN before the first one: Tune needs the metric in every result)."""
    last = _last_row(out_dir)
    return MetricRow(iteration, "paused", trial.columns(),
                     metrics={"bbox_AP": last.get("bbox_AP", float("nan")),
                              "segm_AP": last.get("segm_AP", float("nan"))}).as_dict()


def _loop(cfg: StudyConfig, trial: Trial, setup: Setup, progress: Progress, net: nn.Module, *,
          out_dir: Path, end: int, pause: bool, report: Report, fork_at: Collection[int], sync: Sync,
          fence: Fence, drill: NanDrill | None) -> dict[str, Any]:
    """Iterations progress.iteration + 1 .. end: step, count, report, evaluate, log, checkpoint, fork."""
    solver, device = cfg.solver, setup.device
    rank = collectives.rank()
    bf16 = use_bf16(solver.precision, device)
    lr_solver = dataclasses.replace(solver, base_lr=trial.base_lr)
    sampler = IterationBatchSampler(len(setup.train), solver.ims_per_batch, seed=trial.seed,
                                    start_iter=progress.iteration, max_iter=end, rank=rank,
                                    world_size=collectives.world_size())
    # Its own generator: creating the iterator must not draw from the global RNG, which the
    # RPN/RoI samplers use and the checkpoint restores.
    loader = DataLoader(setup.train, batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.loader_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(trial.seed))

    def save(path: Path, it: int) -> Path | None:
        fence()
        return save_state(path, setup.model, setup.optimizer, progress, it, device=device, sync=sync)

    def log(row: dict[str, Any]) -> None:
        if rank == 0:
            fence()
            sync(layout.append_metrics(out_dir, row))

    evaluations = set(evaluation_points(setup.schedule, solver))
    row: dict[str, Any] = {}
    since_eval = Window()  # for the evaluation rows' throughput
    since_report = Window()  # for the progress rows' losses and throughput
    net.train()
    for it, (images, targets) in enumerate(loader, start=progress.iteration + 1):
        lr = lr_at(it - 1, setup.schedule, lr_solver)
        for group in setup.optimizer.param_groups:
            group["lr"] = lr
        if drill is not None and (drill.iteration, drill.rank) == (it, rank):
            images = [torch.full_like(im, math.nan) for im in images]
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        # a non-finite loss on any rank: every rank skips the step and gets a NaN loss
        losses = train_step(net, images, targets, setup.optimizer, clip_grad_norm=solver.clip_grad_norm,
                            bf16=bf16)
        local = {"images": len(images), "instances": sum(len(t["labels"]) for t in targets),
                 "pixels": sum(im.shape[1] * im.shape[2] for im in images)}
        for k, v in collectives.sum_over_ranks(local).items():
            progress.counts[k] += round(v)
        if not math.isfinite(losses["loss"]):
            # NaN metrics, not missing ones: Tune stops the whole study on a result without its metric
            row = MetricRow(it, "diverged", trial.columns(), lr=lr, losses={k: float("nan") for k in losses},
                            metrics={"bbox_AP": float("nan"), "segm_AP": float("nan")},
                            seen={"images_seen": progress.counts["images"]}).as_dict()
            log(row)
            report(row, None)
            return row
        progress.add_losses(losses)
        since_eval.add(losses)
        since_report.add(losses)
        evaluating = it in evaluations or (it == end and not pause)
        pausing = pause and it == end
        checkpointing = (evaluating or pausing or
                         (solver.checkpoint_period is not None and it % solver.checkpoint_period == 0))
        reported: dict[str, Any] | None = None
        if evaluating:
            row = evaluate_row(setup, trial, it, lr, progress.take_mean_losses(), progress, bf16=bf16,
                               images_per_s=since_eval.images_per_s(solver.ims_per_batch))
            log(row)
            reported = row
        elif pausing:  # the trunk continues from here in a later segment
            reported = row = paused_row(trial, out_dir, it)
        elif checkpointing or it % solver.log_period == 0:
            reported = progress_row(trial, it, lr, since_report.mean_losses(), progress,
                                    images_per_s=since_report.images_per_s(solver.ims_per_batch))
        if it in fork_at:  # before the checkpoint: a run resumed from the checkpoint at `it` is past it
            save(out_dir / layout.fork_checkpoint(it), it)
        saved = save(out_dir / layout.CHECKPOINT, it) if checkpointing else None
        if reported is not None:
            report(reported, saved)
            since_report = Window()
        if evaluating:
            since_eval = Window()
    if rank == 0 and row.get("status") == "finished":  # no fallback needed any more
        fence()
        drop_previous(out_dir, sync)
    return row


class Window:
    """Iterations since a row: their loss sums (averaged over ranks when read) and wall time."""

    def __init__(self) -> None:
        self.start, self.n, self.sums = time.perf_counter(), 0, {}

    def add(self, losses: dict[str, float]) -> None:
        self.n += 1
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def mean_losses(self) -> dict[str, float]:
        """The mean of each loss over the window's iterations and all ranks (every rank calls it)."""
        sums = collectives.sum_over_ranks(self.sums)
        return {k: v / (max(self.n, 1) * collectives.world_size()) for k, v in sums.items()}

    def images_per_s(self, ims_per_batch: int) -> float:
        return self.n * ims_per_batch / max(time.perf_counter() - self.start, 1e-9)
