"""Successive halving over the schedules, on forks, as pure functions: the stages and who survives.

Every schedule of a lineage follows its trunk (the longest schedule) up to its own first LR drop,
its fork point (`study.plan.trials`). So a lineage group's LR candidates can be compared at the
shortest schedule for the price of that schedule alone, and a candidate that is kept *continues*
its trunk instead of starting over. Stage i (schedules s_1 < ... < s_k, fork points f_i):

- each surviving candidate trains its trunk from f_(i-1) to f_i (f_0 = 0) and the branch s_i
  from f_i to the end of s_i; the last stage trains the trunk from f_(k-1) to the end of s_k;
- at the end of a stage the candidates are ranked by s_i's final bbox AP and the best
  ceil(keep x m) of the m survivors go on (at least one); a candidate with no AP (diverged or
  failed) never goes on.

The assumption is that the ranking of the LRs at a shorter schedule predicts it at the longer ones;
what was dropped, and where, is recorded (`Decision`) and reported, so a reader sees what was not
tried at 6x.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from study.config import SolverConfig
from study.plan.schedule import fork_points, schedule_for


@dataclass(frozen=True)
class Stage:
    """What one stage trains: the trunk from `trunk_from` to `trunk_to` (writing a fork checkpoint
    at `trunk_to` unless it is the last stage), and the branch `schedule` from there to `end`."""

    schedule: float  # the schedule whose final AP ranks the candidates after this stage
    trunk_from: int
    trunk_to: int  # the fork point of `schedule`, or the trunk's end at the last stage
    end: int  # `schedule`'s last iteration
    last: bool  # the trunk's own schedule: no branch, the trunk segment ends the lineage

    @property
    def iterations(self) -> int:
        """Iterations one candidate trains in this stage (its trunk segment and its branch)."""
        return self.end - self.trunk_from


def stages(schedules: tuple[float, ...] | list[float], solver: SolverConfig) -> list[Stage]:
    """The stages of halving over `schedules`, shortest first."""
    forks = fork_points(schedules, solver)  # shorter schedules, sorted, to their fork points
    out, start = [], 0
    for schedule, at in forks.items():
        out.append(Stage(schedule, start, at, schedule_for(schedule, solver).max_iter, last=False))
        start = at
    longest = max(schedules)
    end = schedule_for(longest, solver).max_iter
    return out + [Stage(longest, start, end, end, last=True)]


def survivors(m: int, keep: float) -> int:
    """How many of `m` ranked candidates go on: ceil(keep x m), at least 1."""
    return max(1, math.ceil(keep * m - 1e-9))


def survivor_counts(candidates: int, keep: float, n_stages: int) -> list[int]:
    """Candidates per stage when none fails: m_1 = candidates, m_(i+1) = survivors(m_i)."""
    counts = [candidates]
    while len(counts) < n_stages:
        counts.append(survivors(counts[-1], keep))
    return counts


def halving_iterations(candidates: int, keep: float, schedules: tuple[float, ...] | list[float],
                       solver: SolverConfig) -> int:
    """Iterations one lineage group trains with forking and halving (no candidate failing)."""
    plan = stages(schedules, solver)
    return sum(m * stage.iterations for m, stage in zip(survivor_counts(candidates, keep, len(plan)), plan))


@dataclass(frozen=True)
class Decision:
    """One ranking: a group's candidates after one stage, who went on and who was dropped."""

    init: str
    size: str  # the training-set size's label
    seed: int
    schedule: float  # the schedule whose final AP ranked them
    ranked: tuple[tuple[float, float | None], ...]  # (LR, bbox AP), best first; None: no AP
    kept: tuple[float, ...]
    dropped: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ranked": [list(r) for r in self.ranked]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(init=data["init"], size=data["size"], seed=int(data["seed"]),
                   schedule=float(data["schedule"]),
                   ranked=tuple((float(lr), None if ap is None else float(ap)) for lr, ap in data["ranked"]),
                   kept=tuple(float(v) for v in data["kept"]), dropped=tuple(float(v) for v in data["dropped"]))


def rank(results: dict[float, float | None], keep: float) -> tuple[list[tuple[float, float | None]], list[float]]:
    """The candidates ranked by AP (best first; ties by the smaller LR; no AP last) and the LRs
    that go on: the best `survivors(len(results))` of those with an AP."""
    def key(item: tuple[float, float | None]) -> tuple[bool, float, float]:
        lr, ap = item
        missing = ap is None or math.isnan(ap)
        return missing, 0.0 if missing else -ap, lr  # type: ignore[operator]

    ranked = sorted(results.items(), key=key)
    scored = [lr for lr, ap in ranked if ap is not None and not math.isnan(ap)]
    return ranked, scored[:survivors(len(results), keep)]
