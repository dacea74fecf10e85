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
Rowe's recursion; `study.plan.looks`, which `study plan` prices the looks with). Each look's
one-sided nominal level 1 - Phi(c_j) is then used with Student t quantiles of its own seed
count: at look j a verdict's interval is mean ± t(1 - a_j, n - 1) x se, and the claim's rules are
the fixed design's (`study.analysis.claims`) on that interval. A claim
settled at a look (SUPPORTED or CONTRADICTED) stays settled: later seeds do not reopen it.
`tests/study/analysis/test_error_rates.py` checks the resulting error rates by simulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from study.analysis import claims
from study.analysis.results import final_rows
from study.config import AnalysisConfig, Spending, StudyConfig
from study.plan.evidence import look_sizes, study_seeds
from study.plan.looks import Look, plan_looks
from study.plan.schedule import schedule_for


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
    """The design in one sentence, for the report's rules."""
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
    by_size = dict(tuple(df.groupby("size", sort=False)))
    # per size, the most seeds of a look whose trials have all ended (0: not even the first's)
    reached = {size: max((lk.seeds for lk in looks if set(seeds[:lk.seeds]) <= _ended_seeds(rows)), default=0)
               for size, rows in by_size.items()}
    for look in looks:
        parts, fresh = [], set()
        for size, rows in by_size.items():
            if look.number == 1 or reached[size] >= look.seeds:
                fresh.add(size)  # the first look is judged on what has ended, as a fixed design's
            n = min(look.seeds, reached[size]) if reached[size] else looks[0].seeds
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
