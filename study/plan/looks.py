"""The looks of a study that adds seeds while a claim is open, and each look's significance level.

Each side of a verdict spends its 2.5% over the planned looks by a Lan-DeMets spending function of
the information fraction t = seeds at the look / the most seeds (`obrien_fleming`: very little
early, nearly all at the last look; `pocock`: evenly). The boundaries c_1..c_K are the z values
at which the cumulative crossing probability of a Brownian motion observed at t_1..t_K equals
alpha(t_j), found by integrating its density over the continuation region on a grid (Armitage,
McPherson and Rowe's recursion). `study.analysis.sequential` judges the claims at these levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from study.config import Spending

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
