"""The verdicts' error rates, shown by simulation rather than assumed: thousands of studies whose
true gap is known, judged by the functions the analysis uses.

- A directional claim (faster_early, small_data_gap, overfits) whose true gap is 0 is SUPPORTED
  2.5% of the time (one side of a 95% interval), at most 5% with the Monte Carlo error.
- An equivalence claim (catches_up) whose true gap equals the margin is SUPPORTED at most 2.5%.
- On real noise: A/A studies built from the stored scratch curves of the default study (two
  scratch seeds paired as if they were the two arms, over the early window) give faster_early
  SUPPORTED at most 5% of the time.
- The same with seeds added while a claim is open (`study.analysis.sequential`): judged at every
  look, stopped at the first verdict, the rates stay at 2.5% (the looks spend it between them).
Each also shows the rule can say yes (it is not a test that always answers INCONCLUSIVE).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.analysis.claims import difference_verdict, equivalence_verdict, t_interval, window_means
from study.analysis.sequential import first_verdict
from study.plan.looks import Look, plan_looks
from study.layout import read_metrics
from tests.conftest import REPO

STUDIES = 2000
EVALUATIONS = 4  # in a window
RUNS = REPO / "docs" / "results" / "runs"


def _mc_error(p: float) -> float:
    """Three standard errors of a rate p estimated from STUDIES draws."""
    return 3 * math.sqrt(p * (1 - p) / STUDIES)


def _window_gaps(rng: np.random.Generator, gap: float, seeds: int) -> np.ndarray:
    """(STUDIES, seeds) per-seed mean gaps over a window of EVALUATIONS evaluations: each seed's
    own offset (sd 2 AP, shared by its evaluations) plus each evaluation's noise (sd 1.5 AP)."""
    offsets = rng.normal(0.0, 2.0, size=(STUDIES, seeds, 1))
    noise = rng.normal(0.0, 1.5, size=(STUDIES, seeds, EVALUATIONS))
    return (gap + offsets + noise).mean(axis=2)


def _rate(gaps: np.ndarray, decide) -> float:
    return float(np.mean([decide(t_interval(row)) == "SUPPORTED" for row in gaps]))


@pytest.mark.parametrize("seeds", [3, 6])
def test_a_difference_claim_with_no_true_gap_is_supported_2_5_percent_of_the_time(seeds: int) -> None:
    rng = np.random.default_rng(seeds)
    null = _rate(_window_gaps(rng, 0.0, seeds), difference_verdict)
    assert abs(null - 0.025) <= _mc_error(0.025) and null <= 0.05 + _mc_error(0.05)
    # the same rule finds a true gap most of the time: 8 AP with 3 seeds, 4 AP with 6 (per-seed sd 2.1;
    # t(0.975, 2) = 4.30 makes three seeds' interval twice as wide as six seeds')
    assert _rate(_window_gaps(rng, 8.0 if seeds == 3 else 4.0, seeds), difference_verdict) > 0.8


@pytest.mark.parametrize("seeds", [3, 6])
def test_an_equivalence_claim_whose_true_gap_is_the_margin_is_supported_at_most_2_5_percent(seeds: int) -> None:
    rng = np.random.default_rng(100 + seeds)
    margin = 3.0
    at_margin = _rate(_window_gaps(rng, margin, seeds), lambda iv: equivalence_verdict(iv, margin))
    assert at_margin <= 0.025 + _mc_error(0.025)
    # arms that are truly equal are found equal (with 6 seeds, most of the time)
    equal = _rate(_window_gaps(rng, 0.0, seeds), lambda iv: equivalence_verdict(iv, margin))
    assert equal > (0.05 if seeds == 3 else 0.4)


def test_window_means_are_each_seeds_mean_and_leave_out_a_seed_missing_a_point() -> None:
    pairs = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1, 2, 2], "iteration": [100, 200, 300] * 2 + [100, 200],
                          "d": [1.0, 2.0, 6.0, -1.0, 0.0, 4.0, 9.0, 9.0]})
    assert window_means(pairs).to_dict() == {0: 3.0, 1: 1.0}


def _scratch_curves() -> list[dict[int, float]]:
    """bbox AP by iteration of every stored scratch 3x curve of the default study."""
    curves = []
    for trial in sorted(RUNS.glob("default_*/trials/scratch_3x_*")):
        curves.append({r["iteration"]: r["bbox_AP"] for r in read_metrics(trial) if r["status"] != "diverged"})
    return curves


def test_a_a_studies_on_the_default_studys_real_noise_rarely_support_faster_early() -> None:
    """Scratch against scratch: no true gap. Each simulated study pairs three disjoint pairs of
    stored scratch curves (different seeds, or the same seed on another code version), either way
    round, and judges faster_early on the default's early window (evaluations up to 400)."""
    curves = _scratch_curves()
    assert len(curves) >= 12  # seeds 0-11 of the default, some on two code versions
    window = [it for it in sorted(curves[0]) if it <= 400]
    assert window == [100, 200, 300, 400] and all(set(window) <= set(c) for c in curves)
    rng = np.random.default_rng(0)
    supported = 0
    for _ in range(STUDIES):
        picked = rng.choice(len(curves), size=6, replace=False)
        rows = [{"seed": s, "iteration": it, "d": curves[picked[2 * s]][it] - curves[picked[2 * s + 1]][it]}
                for s in range(3) for it in window]
        iv = t_interval(window_means(pd.DataFrame(rows)).tolist())
        supported += difference_verdict(iv) == "SUPPORTED"
    assert supported / STUDIES <= 0.05 + _mc_error(0.05)


def _sequential_rate(rng: np.random.Generator, looks: tuple[Look, ...], gap: float, decide) -> tuple[float, float]:
    """(how often SUPPORTED, the mean seeds used) over STUDIES studies judged at every look, each
    stopped at its first verdict (as the searcher stops adding seeds)."""
    judged = [first_verdict(row, looks, decide) for row in _window_gaps(rng, gap, looks[-1].seeds)]
    return (sum(verdict == "SUPPORTED" for verdict, _ in judged) / STUDIES,
            sum(look.seeds for _, look in judged) / STUDIES)


@pytest.mark.parametrize(("seeds_at", "spending"), [((4, 5), "obrien_fleming"), ((3, 4, 5, 6), "pocock")])
def test_looking_at_every_wave_keeps_both_error_rates_at_2_5_percent(seeds_at: tuple[int, ...], spending) -> None:
    """catch_up.yaml's design (4 seeds, then 5) and a longer one; judged at 95% at each look instead,
    the four looks of the second would support a null gap about twice as often."""
    looks = plan_looks(seeds_at, spending)
    rng = np.random.default_rng(len(seeds_at))
    null, _ = _sequential_rate(rng, looks, 0.0, difference_verdict)
    assert null <= 0.025 + _mc_error(0.025)
    margin = 3.0
    at_margin, _ = _sequential_rate(rng, looks, margin, lambda iv: equivalence_verdict(iv, margin))
    assert at_margin <= 0.025 + _mc_error(0.025)
    # a large true gap settles early: fewer seeds on average than the most
    found, seeds = _sequential_rate(rng, looks, 8.0, difference_verdict)
    assert found > 0.9 and seeds < looks[-1].seeds - 0.5
    if len(looks) > 2:
        naive = tuple(Look(k + 1, look.seeds, 0.025) for k, look in enumerate(looks))
        unspent, _ = _sequential_rate(np.random.default_rng(7), naive, 0.0, difference_verdict)
        assert unspent > 0.025 + _mc_error(0.025)
