"""What a study trains, as pure arithmetic: cells, trials, lineages, fork points, iterations.

A *cell* is one combination of the grid factors (init, schedule, training-set size, seed); each
cell is trained at one or more LRs (a list, or `lr.samples` Optuna draws): one *trial* per
(cell, LR). Trials that differ only in `schedule` share a *lineage* (init, size, LR, seed): they
follow the same trajectory until the shorter schedule's first LR drop, because every schedule
drops a fixed number of iterations before its own end (paper §4). So the lineage's longest
schedule is trained once (the *trunk*), checkpointed at each shorter schedule's first drop (its
*fork point*), and each shorter schedule finishes as a *branch* from there.

For the paper's 1x..6x (90k unit, first drop 60k before the end) that is 540k + 5 x 60k = 840k
iterations per lineage instead of 90k x (1 + ... + 6) = 1,890k: 0.44x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from study.config import GridConfig, SolverConfig, StudyConfig
from study.schedule import schedule_for

Size = tuple[int | Literal["full"] | None, float | None]  # (train_images, data_fraction)


def sizes(grid: GridConfig) -> list[Size]:
    """The grid's training-set sizes: image counts first, then fractions."""
    return [(n, None) for n in grid.train_images] + [(None, f) for f in grid.data_fraction]


def size_label(size: Size) -> str:
    """'full', '1000' or 'frac0.1': how a size reads in tables and trial names."""
    n, fraction = size
    return f"frac{fraction:g}" if fraction is not None else str(n)


def size_from_label(label: str) -> Size:
    if label.startswith("frac"):
        return None, float(label[4:])
    return ("full" if label == "full" else int(label)), None


def fork_points(schedules: tuple[float, ...] | list[float], solver: SolverConfig) -> dict[float, int]:
    """For each schedule shorter than the longest: the iteration where it leaves the trunk (its
    first LR drop). Up to there its LR, data order and random draws equal the trunk's."""
    longest = max(schedules)
    return {s: schedule_for(s, solver).milestones[0] for s in sorted(schedules) if s != longest}


@dataclass(frozen=True)
class StudyPlan:
    cells: int
    lrs_per_cell: int
    trials: int
    lineages: int
    iterations_separate: int  # every trial trained from iteration 0
    iterations_forked: int  # trunks in full, branches from their fork point
    images_per_iteration: int
    gpus_per_trial: float
    workers_per_trial: int
    checkpoint_bytes: int  # one trial checkpoint: model and optimizer state, fp32
    checkpoint_files: int  # kept at once over the whole study (with forking)

    @property
    def disk_bytes(self) -> int:
        return self.checkpoint_bytes * self.checkpoint_files

    @property
    def forked_ratio(self) -> float:
        return self.iterations_forked / self.iterations_separate


def plan_study(cfg: StudyConfig) -> StudyPlan:
    grid, solver = cfg.grid, cfg.solver
    n_lr = cfg.lr.samples if cfg.lr.is_search else len(cfg.lr.values)
    lineages = len(grid.init) * len(sizes(grid)) * len(grid.seeds) * n_lr
    lengths = {s: schedule_for(s, solver).max_iter for s in grid.schedule}
    tails = sum(lengths[s] - at for s, at in fork_points(grid.schedule, solver).items())
    res = cfg.resources
    return StudyPlan(
        cells=len(grid.init) * len(grid.schedule) * len(sizes(grid)) * len(grid.seeds),
        lrs_per_cell=n_lr, trials=lineages * len(grid.schedule), lineages=lineages,
        iterations_separate=lineages * sum(lengths.values()),
        iterations_forked=lineages * (max(lengths.values()) + tails),
        images_per_iteration=solver.ims_per_batch, gpus_per_trial=res.workers * res.gpus_per_worker,
        workers_per_trial=res.workers, checkpoint_bytes=checkpoint_bytes(cfg),
        # each trial keeps checkpoint.pt; each trunk one fork_<it>.pt per shorter schedule; a
        # multi-worker trial also keeps Ray Train's last KEEP_TRAIN_CHECKPOINTS copies
        checkpoint_files=lineages * len(grid.schedule) * (1 + (KEEP_TRAIN_CHECKPOINTS if res.workers > 1 else 0))
        + lineages * (len(grid.schedule) - 1))


KEEP_TRAIN_CHECKPOINTS = 2  # study.trainer.run_trial_on_ray's keep_checkpoints
COCO_CLASSES = 80


def checkpoint_bytes(cfg: StudyConfig) -> int:
    """Bytes of one trial checkpoint: the model's state (parameters and buffers) and SGD's
    momentum for every trained parameter, in fp32 (the model is built on the meta device: no
    memory, no data). Classes: the synthetic set's, or COCO's 80 for a COCO-format set."""
    import torch

    from models.mask_rcnn import build_mask_rcnn
    from study.data.synthetic import CLASSES

    classes = len(CLASSES) if cfg.data.source == "synthetic" else COCO_CLASSES
    with torch.device("meta"):
        model = build_mask_rcnn(backbone=cfg.model.backbone, norm=cfg.model.norm, num_classes=classes,
                                profile=cfg.model.profile, min_size=cfg.model.min_size,
                                max_size=cfg.model.max_size)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + momentum


def format_plan(cfg: StudyConfig, plan: StudyPlan, s_per_iter: float | None = None) -> str:
    """The plan as the `study plan` command prints it."""
    grid = cfg.grid
    lr = (f"Optuna TPE, {cfg.lr.samples} samples per cell in [{cfg.lr.low:g}, {cfg.lr.high:g}] (log)"
          if cfg.lr.is_search else "grid " + ", ".join(f"{v:g}" for v in cfg.lr.values))
    lines = [
        f"study {cfg.name}: {plan.cells} cells x {plan.lrs_per_cell} LRs = {plan.trials} trials "
        f"in {plan.lineages} lineages",
        f"  init      {', '.join(grid.init)}",
        f"  schedule  {', '.join(f'{s:g}x' for s in grid.schedule)} "
        f"(1x = {cfg.solver.unit_iters} iterations of {plan.images_per_iteration} images)",
        f"  size      {', '.join(size_label(s) for s in sizes(grid))}",
        f"  seeds     {', '.join(str(s) for s in grid.seeds)}",
        f"  lr        {lr}",
        f"  trial     {plan.workers_per_trial} worker(s)"
        + (f", {plan.gpus_per_trial:g} GPU(s)" if plan.gpus_per_trial else ", CPU"),
    ]
    forks = fork_points(grid.schedule, cfg.solver)
    if forks:
        lines.append("  forks     " + ", ".join(f"{s:g}x leaves the {max(grid.schedule):g}x trunk at "
                                                 f"{at}" for s, at in forks.items()))
    lines += [f"iterations: {plan.iterations_forked:,} with forking, {plan.iterations_separate:,} "
              f"without ({plan.forked_ratio:.2f}x)",
              f"disk: {_size(plan.disk_bytes)} of checkpoints at most ({plan.checkpoint_files} files of "
              f"{_size(plan.checkpoint_bytes)}: one per trial, one per fork point until its branch starts"
              + (f", Ray Train's last {KEEP_TRAIN_CHECKPOINTS} per trial" if plan.workers_per_trial > 1 else "")
              + f"), {_size(plan.checkpoint_bytes * plan.trials)} when done; plus data and metric logs"]
    if s_per_iter is not None:
        for label, iters in (("with forking", plan.iterations_forked),
                             ("without", plan.iterations_separate)):
            hours = iters * s_per_iter / 3600
            gpu = f", {hours * plan.gpus_per_trial:,.1f} GPU-hours" if plan.gpus_per_trial else ""
            lines.append(f"at {s_per_iter:g} s/iteration {label}: {hours:,.1f} trial-hours{gpu}")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
