"""Verdicts judged more than once: a group-sequential design over the looks at which seeds are added.

A study with `evidence` (`study.plan.evidence`) judges its claims after each wave of seeds. Were
each look judged at the usual 95% level, a claim looked at four times would be declared more often
than 5% of the time when it is false. So each side of a verdict spends its 2.5% over the planned
looks, by a Lan-DeMets spending function of the information fraction t = seeds at the look / the
most seeds:

- `obrien_fleming` (the default): alpha(t) = 2 - 2 Phi(z(1 - 0.025/2) / sqrt(t)): very little
  early, nearly all at the last look, whose interval is then barely wider than a fixed design's;
- `pocock`: alpha(t) = 0.025 ln(1 + (e - 1) t): evenly, which stops earlier on a large effect and
  pays for it with a wider last interval.

The boundaries c_1..c_K are the z values at which the cumulative crossing probability of a
Brownian motion observed at t_1..t_K (the z statistic of a mean over seeds) equals alpha(t_j),
found by integrating its density over the continuation region on a grid (Armitage, McPherson and
Rowe's recursion). Each look's one-sided nominal level 1 - Phi(c_j) is then used with Student t
quantiles of its own seed count: at look j a verdict's interval is mean ± t(1 - a_j, n - 1) x se,
and the claim's rules are the fixed design's (`study.analysis.claims`) on that interval. A claim
settled at a look (SUPPORTED or CONTRADICTED) stays settled: later seeds do not reopen it.
`tests/study/analysis/test_error_rates.py` checks the resulting error rates by simulation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from study.analysis import claims
from study.analysis.results import final_rows
from study.config import AnalysisConfig, Spending, StudyConfig
from study.plan.evidence import look_sizes, study_seeds
from study.plan.schedule import schedule_for

ALPHA = 0.025  # each side of a verdict: the fixed design's 95% interval
GRID_POINTS = 1001  # boundaries within 1e-5 of 4,001 points, in a fiftieth of the time


def spent(t: float, spending: Spending, alpha: float = ALPHA) -> float:
    """The one-sided alpha spent by information fraction `t` (0 < t <= 1)."""
    if spending == "obrien_fleming":
        return float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {spending!r}")


def boundaries(fractions: Sequence[float], spending: Spending, alpha: float = ALPHA) -> tuple[float, ...]:
    """The z boundaries c_j at information fractions t_1 < ... < t_K = 1 (one-sided)."""
    t = [float(f) for f in fractions]
    if any(b <= a for a, b in zip(t, t[1:])) or not 0 < t[0] or abs(t[-1] - 1) > 1e-9:
        raise ValueError(f"information fractions {t} must increase to 1")
    spend = [spent(f, spending, alpha) for f in t]
    c = [float(stats.norm.ppf(1 - spend[0]))]
    # the sub-density of B(t_1) on the continuation region, B(t) = Z(t) sqrt(t)
    x = np.linspace(-8 * math.sqrt(t[0]), c[0] * math.sqrt(t[0]), GRID_POINTS)
    f = stats.norm.pdf(x, scale=math.sqrt(t[0]))
    for j in range(1, len(t)):
        sd = math.sqrt(t[j] - t[j - 1])
        target = spend[j] - spend[j - 1]

        def crossing(cj: float, x: np.ndarray = x, f: np.ndarray = f, sd: float = sd, tj: float = t[j]) -> float:
            return float(np.trapezoid(f * stats.norm.sf((cj * math.sqrt(tj) - x) / sd), x))

        cj = float(optimize.brentq(lambda v, target=target: crossing(v) - target, -10, 40, xtol=1e-10))
        c.append(cj)
        new_x = np.linspace(-8 * math.sqrt(t[j]), cj * math.sqrt(t[j]), GRID_POINTS)
        kernel = stats.norm.pdf((new_x[:, None] - x[None, :]) / sd) / sd
        f = np.trapezoid(kernel * f[None, :], x, axis=1)
        x = new_x
    return tuple(c)


@dataclass(frozen=True)
class Look:
    """One planned look: how many seeds have trained, and the one-sided nominal level of each side."""

    number: int  # 1-based
    seeds: int
    alpha: float

    @property
    def level(self) -> float:
        """The two-sided level of the interval judged at this look (0.95 for a single look)."""
        return 1 - 2 * self.alpha


def plan_looks(seeds_at: Sequence[int], spending: Spending, alpha: float = ALPHA) -> tuple[Look, ...]:
    """The looks at these cumulative seed counts (the last is the most seeds); one look is the fixed
    design (its level 95%)."""
    if len(seeds_at) == 1:
        return (Look(1, int(seeds_at[0]), alpha),)
    most = seeds_at[-1]
    c = boundaries([n / most for n in seeds_at], spending, alpha)
    return tuple(Look(j + 1, int(n), float(stats.norm.sf(cj))) for j, (n, cj) in enumerate(zip(seeds_at, c)))


def first_verdict(values: Sequence[float], looks: Sequence[Look],
                  decide: Callable[[claims.Interval], claims.Verdict]) -> tuple[claims.Verdict, Look]:
    """One claim judged look by look on per-seed values in the order the seeds were added: the
    first verdict that is not INCONCLUSIVE and its look, else INCONCLUSIVE at the last look (the
    rule `judge_looks` applies to a study, for simulations)."""
    for look in looks:
        verdict = decide(claims.t_interval(values[:look.seeds], look.level))
        if verdict != "INCONCLUSIVE":
            return verdict, look
    return "INCONCLUSIVE", looks[-1]


def describe(looks: Sequence[Look], spending: Spending) -> str:
    """The design in one sentence, for the report's rules and `study plan`."""
    if len(looks) == 1:
        return "one look (the fixed design): 95% intervals"
    at = ", ".join(f"{look.seeds} seeds {claims.level_text(look.level)}" for look in looks)
    return (f"{len(looks)} looks, each side's 2.5% spent over them ({spending.replace('_', '-')} spending): "
            f"intervals at {at}; a claim settled at a look stays settled")


# --------------------------------------------------------------------------------------------------
# Judging a study
# --------------------------------------------------------------------------------------------------


def judge_study(df: pd.DataFrame, cfg: StudyConfig | None, tol: float | None = None,
                metric: str = "bbox_AP") -> tuple[list[claims.Claim], list[str]]:
    """The claims of a study's results, judged as its config declares: the early window, the final
    windows after each schedule's last LR drop, the margin; once (no `evidence`), or at each look
    its seeds reached. Without a config (a run that saved none) `faster_early` is not judged and
    the final AP is the last evaluation's."""
    if cfg is None:
        return claims.judge(df, early_window=None, margin=AnalysisConfig().margin, tol=tol, metric=metric)
    a = cfg.analysis
    kw: dict[str, Any] = dict(
        early_window=claims.early_window(a.early_window, a.early_iteration, cfg.solver.unit_iters),
        margin=a.margin, tol=tol, metric=metric,
        last_drops={s: m[-1] for s in cfg.grid.schedule if (m := schedule_for(s, cfg.solver).milestones)})
    if cfg.evidence is None:
        return claims.judge(df, **kw)
    return judge_looks(df, study_seeds(cfg), plan_looks(look_sizes(cfg), cfg.evidence.spending), **kw)


def judge_looks(df: pd.DataFrame, seeds: Sequence[int], looks: Sequence[Look],
                **judge: Any) -> tuple[list[claims.Claim], list[str]]:
    """Each claim at the first look where it is settled, else at the last look its training-set size
    reached. At look j > 1 a size counts the first `looks[j].seeds` of `seeds` once all their
    trials there have ended; a size whose seeds stopped earlier (its claims settled) keeps the
    seeds it has, so claims across sizes (small_data_gap) still see it. The first look is judged
    on whatever of its seeds has finished (a run in progress reads as a fixed design's would).
    Seeds not in `seeds` are ignored."""
    out: dict[tuple[str, str, str | None], claims.Claim] = {}
    omitted: list[str] = []
    ended = {size: _ended_seeds(rows) for size, rows in df.groupby("size", sort=False)}
    for look in looks:
        parts, fresh = [], set()
        for size, rows in df.groupby("size", sort=False):
            reached = [lk.seeds for lk in looks if set(seeds[:lk.seeds]) <= ended[size]]
            if look.number == 1 or (reached and reached[-1] >= look.seeds):
                fresh.add(size)  # the first look is judged on what has ended, as a fixed design's
            n = min(look.seeds, reached[-1]) if reached else looks[0].seeds
            parts.append(rows[rows["seed"].isin(seeds[:n])])
        if not fresh:
            break
        found, omitted = claims.judge(pd.concat(parts), level=look.level, **judge)
        for c in found:
            key = (c.claim, c.size, c.init)
            if c.size in fresh and (key not in out or out[key].verdict == "INCONCLUSIVE"):
                out[key] = dataclasses.replace(c, look=look.number, looks=len(looks))
    return list(out.values()), omitted


def _ended_seeds(rows: pd.DataFrame) -> set[int]:
    """The seeds whose every trial in `rows` has ended (finished, diverged, errored or dropped)."""
    finals = final_rows(rows)
    running = set(finals.loc[finals["status"] == "running", "seed"])
    return {int(s) for s in finals["seed"]} - {int(s) for s in running}


def open_sizes(found: Sequence[claims.Claim]) -> set[str]:
    """The training-set sizes with a claim still INCONCLUSIVE: where more seeds would train."""
    return {c.size for c in found if c.verdict == "INCONCLUSIVE"}
