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
        workers_per_trial=res.workers)


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
              f"without ({plan.forked_ratio:.2f}x)"]
    if s_per_iter is not None:
        for label, iters in (("with forking", plan.iterations_forked),
                             ("without", plan.iterations_separate)):
            hours = iters * s_per_iter / 3600
            gpu = f", {hours * plan.gpus_per_trial:,.1f} GPU-hours" if plan.gpus_per_trial else ""
            lines.append(f"at {s_per_iter:g} s/iteration {label}: {hours:,.1f} trial-hours{gpu}")
    return "\n".join(lines)
