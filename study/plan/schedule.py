"""The paper's schedule as pure functions: an iteration in, a learning rate out.

"kx" is k times the 1x unit of iterations (90k at 16 images per iteration in the paper). The LR
is divided by 10 at (end - 60k) and again at (end - 20k) of that unit, whatever k is (paper §4:
2x drops at 120k/160k and ends at 180k; 6x at 480k/520k, 540k), after a linear warm-up.
`rescale` is the one place where a different batch size changes the numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from study.config import SolverConfig


@dataclass(frozen=True)
class Schedule:
    """One schedule in iterations: where it ends and where the LR drops."""

    max_iter: int
    milestones: tuple[int, ...]
    warmup_iters: int


def schedule_for(multiplier: float, solver: SolverConfig) -> Schedule:
    """The `multiplier`x schedule of `solver` (`SolverConfig.iterations` holds the paper's rule);
    a ConfigError if its drops would come before the end of warm-up."""
    max_iter, milestones = solver.iterations(multiplier)
    return Schedule(max_iter=max_iter, milestones=milestones, warmup_iters=solver.warmup_iters)


def fork_points(schedules: tuple[float, ...] | list[float], solver: SolverConfig) -> dict[float, int]:
    """For each schedule shorter than the longest: the iteration where it leaves the trunk (its
    first LR drop). Up to there its LR, data order and random draws equal the trunk's."""
    longest = max(schedules)
    return {s: schedule_for(s, solver).milestones[0] for s in sorted(schedules) if s != longest}


def lr_at(iteration: int, schedule: Schedule, solver: SolverConfig) -> float:
    """The LR of (0-based) iteration `iteration`: linear warm-up from base_lr * warmup_factor,
    then base_lr times gamma for each milestone passed (detectron2's WarmupMultiStepLR)."""
    lr = solver.base_lr * solver.gamma ** sum(iteration >= m for m in schedule.milestones)
    if iteration < schedule.warmup_iters:
        alpha = iteration / schedule.warmup_iters
        lr *= solver.warmup_factor * (1 - alpha) + alpha
    return lr


def rescale(solver: SolverConfig, ims_per_batch: int) -> SolverConfig:
    """The same schedule at another batch size: LR linear in the batch, iterations inversely
    (Goyal et al.'s rule, which the paper's 16-image settings are stated for)."""
    if ims_per_batch <= 0:
        raise ValueError(f"ims_per_batch {ims_per_batch} must be > 0")
    ratio = ims_per_batch / solver.ims_per_batch

    def iters(n: int) -> int:
        return max(1, round(n / ratio))

    return dataclasses.replace(
        solver, ims_per_batch=ims_per_batch, base_lr=solver.base_lr * ratio,
        unit_iters=iters(solver.unit_iters), warmup_iters=round(solver.warmup_iters / ratio),
        drops_before_end=tuple(iters(d) for d in solver.drops_before_end),
        eval_period=iters(solver.eval_period))


def evaluation_points(schedule: Schedule, solver: SolverConfig) -> tuple[int, ...]:
    """The (1-based) iterations after which the schedule evaluates: every `eval_period`, the end,
    and with `final_eval_period` every that many iterations back from the end while after the last
    LR drop (the final window the claims on final AP average)."""
    points = set(range(solver.eval_period, schedule.max_iter + 1, solver.eval_period)) | {schedule.max_iter}
    if solver.final_eval_period is not None and schedule.milestones:
        last_drop = schedule.milestones[-1]
        points |= {it for it in range(schedule.max_iter, last_drop, -solver.final_eval_period)}
    return tuple(sorted(points))


def final_window(schedule: Schedule, solver: SolverConfig) -> tuple[int, ...]:
    """The evaluations after the schedule's last LR drop (its final window)."""
    after = schedule.milestones[-1] if schedule.milestones else 0
    return tuple(it for it in evaluation_points(schedule, solver) if it > after)
