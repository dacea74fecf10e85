"""What a study costs, as pure arithmetic: cells, trials, lineages, iterations and checkpoint files.

Forking (see `study.plan.trials`) trains each lineage's longest schedule once and every shorter
one only from its fork point. For the paper's 1x..6x (90k unit, first drop 60k before the end)
that is 540k + 5 x 60k = 840k iterations per lineage instead of 90k x (1 + ... + 6) = 1,890k: 0.44x.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.config import StudyConfig
from study.layout import TRAIN_CHECKPOINTS_KEPT
from study.plan.evidence import look_sizes, up_to_look, wave
from study.plan.halving import halving_iterations, stages, survivor_counts
from study.plan.schedule import evaluation_points, final_window, fork_points, schedule_for
from study.plan.trials import sizes

DEFAULT_KEEP = 0.5  # the fraction `study plan` prices halving at when the study sets none


@dataclass(frozen=True)
class StudyPlan:
    cells: int
    lrs_per_cell: int
    trials: int
    lineages: int
    iterations_separate: int  # every trial trained from iteration 0
    iterations_forked: int  # trunks in full, branches from their fork point
    iterations_halving: int  # forked, with successive halving over the schedules at `keep`
    keep: float  # halving's fraction: the study's own, or DEFAULT_KEEP
    halving: bool  # whether the study halves (`lr.halving`)
    tune_trials: int  # Tune trials the study runs (a halving trunk is one per segment), at most
    trials_run: int  # study trials (folders of results) it runs: fewer than `trials` with halving
    images_per_iteration: int
    gpus_per_trial: float
    workers_per_trial: int
    checkpoint_files: int  # kept at once over the whole study (with forking)

    @property
    def forked_ratio(self) -> float:
        return self.iterations_forked / self.iterations_separate

    @property
    def halving_ratio(self) -> float:
        return self.iterations_halving / self.iterations_separate


def plan_study(cfg: StudyConfig, *, lrs: int | None = None, keep: float | None = None) -> StudyPlan:
    """What `cfg` trains; `lrs` and `keep` price it with another number of LR candidates per cell
    or another halving fraction (`study plan --lrs --keep`)."""
    grid, solver = cfg.grid, cfg.solver
    n_lr = lrs or cfg.lr.candidates
    halving = cfg.lr.halving is not None
    keep = keep or (cfg.lr.halving.keep if cfg.lr.halving is not None else DEFAULT_KEEP)
    groups = len(grid.init) * len(sizes(grid)) * len(grid.seeds)
    lineages = groups * n_lr
    lengths = {s: schedule_for(s, solver).max_iter for s in grid.schedule}
    tails = sum(lengths[s] - at for s, at in fork_points(grid.schedule, solver).items())
    n_stages = len(stages(grid.schedule, solver))
    # per stage m candidates run a trunk segment and a branch; the last stage, the trunk's end
    counts = survivor_counts(n_lr, keep, n_stages)
    res = cfg.resources
    return StudyPlan(
        cells=len(grid.init) * len(grid.schedule) * len(sizes(grid)) * len(grid.seeds),
        lrs_per_cell=n_lr, trials=lineages * len(grid.schedule), lineages=lineages,
        iterations_separate=lineages * sum(lengths.values()),
        iterations_forked=lineages * (max(lengths.values()) + tails),
        iterations_halving=groups * halving_iterations(n_lr, keep, grid.schedule, solver),
        keep=keep, halving=halving,
        tune_trials=groups * (2 * sum(counts[:-1]) + counts[-1]) if halving else lineages * len(grid.schedule),
        # with halving: every candidate's trunk, and the branches of the stages it reached
        trials_run=groups * (n_lr + sum(counts[:-1])) if halving else lineages * len(grid.schedule),
        images_per_iteration=solver.ims_per_batch, gpus_per_trial=res.workers * res.gpus_per_worker,
        workers_per_trial=res.workers,
        # each trial keeps its checkpoint, and while it runs the previous one (its fallback); each
        # trunk one fork checkpoint per shorter schedule; a multi-worker trial also keeps Ray
        # Train's last TRAIN_CHECKPOINTS_KEPT copies
        checkpoint_files=lineages * len(grid.schedule) * (1 + (TRAIN_CHECKPOINTS_KEPT if not res.in_process else 0))
        + min(lineages * len(grid.schedule), res.max_concurrent_trials or lineages * len(grid.schedule))
        + lineages * (len(grid.schedule) - 1))


MIN_EVALUATIONS_LONGEST, MIN_EVALUATIONS_SHORTEST = 6, 2  # a learning curve needs points
MIN_FINAL_EVALUATIONS = 2  # a final window averages more than one evaluation


def evaluations(multiplier: float, cfg: StudyConfig) -> int:
    """How many evaluations the `multiplier`x schedule has (`evaluation_points`)."""
    return len(evaluation_points(schedule_for(multiplier, cfg.solver), cfg.solver))


def final_evaluations(multiplier: float, cfg: StudyConfig) -> int:
    """How many of them fall after its last LR drop: the final window the claims on final AP average."""
    return len(final_window(schedule_for(multiplier, cfg.solver), cfg.solver))


def evaluations_forked(cfg: StudyConfig) -> int:
    """The evaluations a study makes with forking: each trunk's, and each branch's after its fork."""
    solver = cfg.solver
    longest = max(cfg.grid.schedule)
    per_lineage = len(evaluation_points(schedule_for(longest, solver), solver)) + sum(
        sum(it > at for it in evaluation_points(schedule_for(s, solver), solver))
        for s, at in fork_points(cfg.grid.schedule, solver).items())
    return plan_study(cfg).lineages * per_lineage


def evaluation_warnings(cfg: StudyConfig) -> list[str]:
    """Warnings when the curves would have too few points to judge a claim on."""
    out = []
    longest, shortest = max(cfg.grid.schedule), min(cfg.grid.schedule)
    for multiplier, least, what in ((longest, MIN_EVALUATIONS_LONGEST, "longest"),
                                    (shortest, MIN_EVALUATIONS_SHORTEST, "shortest")):
        n = evaluations(multiplier, cfg)
        if n < least and (what == "longest" or multiplier != longest):
            out.append(f"warning: the {what} schedule ({multiplier:g}x) has {n} evaluation(s) at "
                       f"solver.eval_period {cfg.solver.eval_period}; its learning curve needs at least "
                       f"{least}: lower solver.eval_period")
    thin = [s for s in sorted(cfg.grid.schedule) if final_evaluations(s, cfg) < MIN_FINAL_EVALUATIONS]
    if thin:
        out.append(f"warning: {', '.join(f'{s:g}x' for s in thin)} evaluate(s) fewer than {MIN_FINAL_EVALUATIONS} times "
                   "after the last LR drop, so the claims on final AP rest on one evaluation per seed: set "
                   "solver.final_eval_period (e.g. a third of the last phase, "
                   f"{cfg.solver.drops_before_end[-1] // 3 or 1} iterations)")
    return out


def format_plan(cfg: StudyConfig, plan: StudyPlan, *, checkpoint_bytes: int,
                s_per_iter: float | None = None) -> str:
    """The plan as the `study plan` command prints it; `checkpoint_bytes` is the size of one
    trial checkpoint (`study.train.state.checkpoint_bytes`)."""
    grid = cfg.grid
    lr = (f"Optuna {cfg.lr.sampler}, {cfg.lr.samples} samples per cell in [{cfg.lr.low:g}, {cfg.lr.high:g}] (log)"
          if cfg.lr.is_search else "grid " + ", ".join(f"{v:g}" for v in cfg.lr.values))
    if plan.lrs_per_cell != cfg.lr.candidates:
        lr += f"; planned with {plan.lrs_per_cell} LRs per cell (--lrs)"
    lines = [
        f"study {cfg.name}: {plan.cells} cells x {plan.lrs_per_cell} LRs = {plan.trials} trials "
        f"in {plan.lineages} lineages",
        f"  init      {', '.join(grid.init)}",
        f"  schedule  {', '.join(f'{s:g}x' for s in grid.schedule)} "
        f"(1x = {cfg.solver.unit_iters} iterations of {plan.images_per_iteration} images)",
        f"  size      {', '.join(s.label for s in sizes(grid))}",
        f"  seeds     {', '.join(str(s) for s in grid.seeds)}"
        + (f" (the first look; up to {cfg.evidence.max_seeds} while a claim is open)" if cfg.evidence else ""),
        f"  lr        {lr}",
        f"  trial     {plan.workers_per_trial} worker(s)"
        + (f", {plan.gpus_per_trial:g} GPU(s)" if plan.gpus_per_trial else ", CPU"),
    ]
    forks = fork_points(grid.schedule, cfg.solver)
    if forks:
        lines.append("  forks     " + ", ".join(f"{s:g}x leaves the {max(grid.schedule):g}x trunk at "
                                                 f"{at}" for s, at in forks.items()))
    runs = "forked + halving" if plan.halving else "forked"
    lines += [f"iterations: {plan.iterations_separate:,} naive (every trial from 0), "
              f"{plan.iterations_forked:,} forked ({plan.forked_ratio:.2f}x), "
              f"{plan.iterations_halving:,} forked + halving keep {plan.keep:g} ({plan.halving_ratio:.2f}x); "
              f"this study runs {runs}"
              + ("" if plan.halving or plan.lrs_per_cell < 2 else " (add lr.halving to halve)"),
              f"disk: {_size(checkpoint_bytes * plan.checkpoint_files)} of checkpoints at most "
              f"({plan.checkpoint_files} files of {_size(checkpoint_bytes)}: one per trial, its previous one "
              "while it runs, one per fork point until its branch starts"
              + (f", Ray Train's last {TRAIN_CHECKPOINTS_KEPT} per trial" if plan.workers_per_trial > 1 else "")
              + f"), {_size(checkpoint_bytes * plan.trials)} when done; plus data and metric logs"]
    final = cfg.solver.final_eval_period
    lines.append("evaluations: " + ", ".join(f"{s:g}x {evaluations(s, cfg)} ({final_evaluations(s, cfg)} after "
                                             "the last drop)" for s in sorted(grid.schedule))
                 + f" (every {cfg.solver.eval_period} iterations, at the end"
                 + (f", every {final} back from the end after the last drop)" if final else ")"))
    lines += evaluation_warnings(cfg)
    if plan.halving or plan.lrs_per_cell > 1:
        counts = survivor_counts(plan.lrs_per_cell, plan.keep, len(grid.schedule))
        lines.append(f"halving{'' if plan.halving else ' (if on)'}: LRs per cell at " + ", ".join(
            f"{s:g}x {m}" for s, m in zip(sorted(grid.schedule), counts))
            + " (ranked by each schedule's final bbox AP)")
    lines += _looks(cfg, s_per_iter)
    if s_per_iter is not None:
        for label, iters in (("naive", plan.iterations_separate), ("forked", plan.iterations_forked),
                             ("forked + halving", plan.iterations_halving)):
            hours = iters * s_per_iter / 3600
            gpu = f", {hours * plan.gpus_per_trial:,.1f} GPU-hours" if plan.gpus_per_trial else ""
            lines.append(f"at {s_per_iter:g} s/iteration {label}: {hours:,.1f} trial-hours{gpu}")
    return "\n".join(lines)


def _looks(cfg: StudyConfig, s_per_iter: float | None) -> list[str]:
    """With `evidence`: what the study has trained by each look, and each look's interval level."""
    if cfg.evidence is None:
        return []
    from study.plan.looks import plan_looks  # scipy: only for a study that adds seeds

    looks = plan_looks(look_sizes(cfg), cfg.evidence.spending)
    lines = [f"looks (seeds added while a claim is open, {cfg.evidence.step} at a time, up to "
             f"{cfg.evidence.max_seeds}; {cfg.evidence.spending.replace('_', '-')} spending):"]
    for look in looks:
        plan = plan_study(up_to_look(cfg, look.number - 1))
        iters = plan.iterations_halving if plan.halving else plan.iterations_forked
        cost = f", {iters * s_per_iter / 3600:,.2f} trial-hours" if s_per_iter is not None else ""
        lines.append(f"  look {look.number}: seeds {', '.join(map(str, wave(cfg, look.number - 1)))} "
                     f"-> {look.seeds} seeds, {plan.trials_run} trials, {iters:,} iterations{cost} in all; "
                     f"intervals at {100 * look.level:.3g}%")
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
