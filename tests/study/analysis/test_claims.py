"""The paper's claims judged on constructed results with known answers: paired seeds, Student-t
intervals checked by hand, each verdict, a diverged seed left out, one seed always inconclusive."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from study.analysis import claims
from study.analysis.claims import load_claims, seeds_to_resolve, t_interval
from study.analysis.report import write_report
from study.analysis.results import load_results
from study.plan.trials import Size, Trial

UNIT = 20  # 1x = 20 iterations, evaluations every 10: the early point (half of 1x) is iteration 10
SCHEDULES = (1, 2, 3)


def _write(run: Path, trial: Trial, early: float, final: float, *, diverged: bool = False) -> None:
    folder = run / "trials" / trial.name()
    folder.mkdir(parents=True)
    end = int(trial.schedule * UNIT)
    its = list(range(10, end + 1, 10))
    rows = []
    for it in its:
        ap = early + (final - early) * (it - 10) / max(1, end - 10)
        rows.append({"iteration": it, "status": "finished" if it == end else "running", "lr": trial.base_lr,
                     **trial.columns(), "loss": 1.0, "bbox_AP": ap, "images_seen": 2 * it,
                     "instances_seen": 4 * it, "pixels_seen": 2 * it * 4096})
    if diverged:
        rows = [rows[0], {**rows[0], "iteration": 15, "status": "diverged", "bbox_AP": math.nan}]
    folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _study(run: Path, seeds: list[int], sizes: list[int], extra: str = "") -> None:
    (run / "study.yaml").write_text(
        f"name: toy\nmodel: {{backbone: resnet18, norm: gn}}\nsolver: {{unit_iters: {UNIT}, "
        f"drops_before_end: [10, 5], warmup_iters: 1, eval_period: 10}}\ngrid: {{schedule: [1, 2, 3], "
        f"train_images: {sizes}, seeds: {seeds}}}\nlr: {{values: [0.02]}}\n{extra}")


# (size, init, schedule) -> final AP per seed 0..3; early AP (iteration 10) per seed below
FINALS = {
    (1000, "scratch", 1): [30, 30.5, 29.5, 30.2], (1000, "scratch", 2): [36, 36.5, 35.5, 36.2],
    (1000, "scratch", 3): [40.0, 40.1, 39.9, 40.0],
    (1000, "pretrained", 1): [36, 36.5, 35.5, 36.2], (1000, "pretrained", 2): [39, 39.5, 38.5, 39.2],
    (1000, "pretrained", 3): [40.1, 39.9, 40.0, 40.3],  # paired final gaps 0.1, -0.2, 0.1
    (100, "scratch", 1): [6, 6.2, 5.8, 6.1], (100, "scratch", 2): [8, 8.2, 7.8, 8.1],
    (100, "scratch", 3): [10, 10.2, 9.8, 10.1],
    (100, "pretrained", 1): [18, 18.2, 17.8, 18.1], (100, "pretrained", 2): [22.1, 22.1, 21.8, 22.1],
    (100, "pretrained", 3): [20.0, 20.3, 19.8, 20.1],  # a peak at 2x, a fall of ~2 at 3x
}
EARLY_SCRATCH = [5.0, 5.5, 4.5, 5.2]
EARLY_GAP = {1000: [2.0, 3.0, 4.0, 3.0], 100: [5.0, -4.0, 1.0, 0.0]}  # a clear lead; noise


@pytest.fixture
def run(tmp_path: Path) -> Path:
    for (size, init, schedule), finals in FINALS.items():
        for seed, final in enumerate(finals):
            early = EARLY_SCRATCH[seed] + (EARLY_GAP[size][seed] if init == "pretrained" else 0.0)
            trial = Trial(init=init, schedule=schedule, base_lr=0.02, seed=seed, size=Size(size))  # type: ignore[arg-type]
            # seed 3 of scratch diverges at 3x on 1000 images: it must be left out, not averaged in
            _write(tmp_path, trial, early, final, diverged=(size, init, schedule, seed) == (1000, "scratch", 3, 3))
    _study(tmp_path, [0, 1, 2, 3], [1000, 100])
    return tmp_path


def _judge(run: Path, **kw) -> dict[tuple, claims.Claim]:
    found, _ = claims.judge(load_results(run), early_window=(0, 10), **kw)
    return {(c.claim, c.size, c.init): c for c in found}


def test_the_interval_is_students_t_over_paired_seeds() -> None:
    iv = t_interval([2.0, 3.0, 4.0])
    # by hand: mean 3, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653 -> half-width 2.484138
    assert (iv.n, iv.mean, iv.sd) == (3, pytest.approx(3.0), pytest.approx(1.0))
    assert iv.se == pytest.approx(0.577350, abs=1e-6)
    assert (iv.low, iv.high) == (pytest.approx(0.515862, abs=1e-6), pytest.approx(5.484138, abs=1e-6))
    one = t_interval([1.5])
    assert one.n == 1 and one.mean == 1.5 and math.isnan(one.low) and math.isnan(one.high)
    # sd 4: t(0.975, n-1) x 4 / sqrt(n) < 1 first at n = 64 (t(0.975, 63) = 1.998: 0.9992)
    assert seeds_to_resolve(4.0) == 64 and seeds_to_resolve(0.1) == 2 and seeds_to_resolve(math.nan) is None


def test_a_clear_early_lead_is_supported_with_the_hand_computed_interval(run: Path) -> None:
    early = _judge(run)[("faster_early", "1000", None)]
    assert early.verdict == "SUPPORTED" and (early.schedule, early.iteration) == (3.0, 10)
    assert early.n_seeds == 3  # seed 3 diverged in the scratch arm at 3x
    assert (early.gap, early.ci_low, early.ci_high) == (pytest.approx(3.0), pytest.approx(0.515862, abs=1e-5),
                                                        pytest.approx(5.484138, abs=1e-5))
    assert "seed 3 left out (scratch 3x diverged)" in early.detail
    assert claims.sentence(early).startswith("On 1000 training images pretrained is ahead early: +3.0 bbox_AP "
                                             "at iteration 10 of the 3x schedule (95% interval +0.5 to +5.5, 3 seeds)")


def test_equal_arms_within_the_margin_catch_up_and_a_larger_gap_contradicts(run: Path) -> None:
    found = _judge(run)
    level = found[("catches_up", "1000", None)]
    # final gaps 0.1, -0.2, 0.1: mean 0, sd 0.1732, t(0.975, 2) x se = 0.4303
    assert level.verdict == "SUPPORTED" and level.margin == 1.5 and level.n_seeds == 3
    assert (level.ci_low, level.ci_high) == (pytest.approx(-0.4303, abs=1e-4), pytest.approx(0.4303, abs=1e-4))
    assert "first enters the margin at 3x" in level.detail
    behind = found[("catches_up", "100", None)]
    assert behind.verdict == "CONTRADICTED" and behind.ci_low > behind.margin
    assert "scratch does not catch up by 3x: pretrained leads by 10.0" in claims.sentence(behind)
    # --tol may narrow the margin: 0.3 AP is narrower than the interval, so it no longer decides
    narrow = _judge(run, tol=0.3)[("catches_up", "1000", None)]
    assert narrow.margin == 0.3 and narrow.verdict == "INCONCLUSIVE"
    # and a wide margin is capped at max(1.5, 5% of pretrained's AP): 5% of 40.1 is 2.0
    assert _judge(run, margin=10.0)[("catches_up", "1000", None)].margin == round(0.05 * 40.075, 2)


def test_noisy_seeds_are_inconclusive_and_say_what_would_resolve_them(run: Path) -> None:
    noisy = _judge(run)[("faster_early", "100", None)]
    assert noisy.verdict == "INCONCLUSIVE" and noisy.n_seeds == 4
    iv = t_interval(EARLY_GAP[100])
    assert (noisy.ci_low, noisy.ci_high) == (pytest.approx(iv.low), pytest.approx(iv.high))
    need = seeds_to_resolve(iv.sd)
    assert claims.sentence(noisy) == (
        f"faster_early on 100 images: INCONCLUSIVE: the gap is +0.5 AP (95% interval {iv.low:+.1f} to "
        f"{iv.high:+.1f}, 4 seeds); with this spread about {need} seeds would resolve a 1 AP gap.")
    # a wide, noisy early gap (three seeds' gaps +20, +2 and +9 AP: sd 9.07) is settled by excluding 0,
    # which takes 6 seeds if the gap stays near +10.3 (t(0.975, 5) x 9.07 / sqrt(6) = 9.5 < 10.3; with
    # 5 seeds, 11.3); resolving a 1 AP gap would take 319
    wide = dataclasses.replace(noisy, n_seeds=3, gap=10.333, se=float(np.std([20, 2, 9], ddof=1)) / math.sqrt(3))
    assert seeds_to_resolve(wide.se * math.sqrt(3), 10.333) == 6
    assert claims.sentence(wide).endswith(
        "with this spread about 6 seeds would put the interval clear of 0 if the gap stays near +10.3 (about "
        "319 seeds would resolve a 1 AP gap).")


def test_small_data_and_overfitting(run: Path) -> None:
    found = _judge(run)
    small = found[("small_data_gap", "100", None)]
    assert small.verdict == "SUPPORTED" and small.schedule == 2.0
    assert small.gap == pytest.approx((22.1 + 22.1 + 21.8 + 22.1) / 4 - (10 + 10.2 + 9.8 + 10.1) / 4)
    assert "pretrained at 2x vs scratch at 3x" in small.detail
    assert ("small_data_gap", "1000", None) not in found  # only the smallest set
    falls = found[("overfits", "100", "pretrained")]
    assert falls.verdict == "SUPPORTED" and (falls.other_schedule, falls.schedule) == (2.0, 3.0)
    assert falls.gap == pytest.approx(((22.1 + 22.1 + 21.8 + 22.1) - (20.0 + 20.3 + 19.8 + 20.1)) / 4)
    rises = found[("overfits", "100", "scratch")]  # 8 -> 10: it keeps improving
    assert rises.verdict == "CONTRADICTED" and rises.gap == pytest.approx(-2.0) and rises.ci_high < 0
    assert claims.sentence(rises).startswith("On 100 training images scratch does not overfit: its AP rises by "
                                             "2.0 from 2x to 3x")
    assert found[("overfits", "1000", "pretrained")].verdict == "CONTRADICTED"


def test_one_seed_is_always_inconclusive(tmp_path: Path) -> None:
    for (size, init, schedule), finals in FINALS.items():
        early = EARLY_SCRATCH[0] + (EARLY_GAP[size][0] if init == "pretrained" else 0.0)
        _write(tmp_path, Trial(init=init, schedule=schedule, base_lr=0.02, seed=0, size=Size(size)),  # type: ignore[arg-type]
               early, finals[0])
    _study(tmp_path, [0], [1000, 100])
    found, _ = claims.judge(load_results(tmp_path), early_window=(0, 10))
    assert len(found) == 2 * 2 + 1 + 4 and {c.verdict for c in found} == {"INCONCLUSIVE"}
    assert all(c.n_seeds == 1 and c.ci_low is not None and math.isnan(c.ci_low) for c in found)
    one = next(c for c in found if c.claim == "faster_early")
    assert claims.sentence(one).endswith("INCONCLUSIVE: the gap is +2.0 AP with 1 seed (no interval).")


def test_claims_json_and_the_report_open_with_the_verdicts(run: Path) -> None:
    _study(run, [0, 1, 2, 3], [1000, 100], extra="analysis: {early_iteration: 10, margin: 1.5}\n")
    report, summary = write_report(run, run / "out")
    frame = load_claims(run / "out")
    for column in ("claim", "size", "schedule", "iteration", "n_seeds", "gap", "ci_low", "ci_high", "margin",
                   "verdict", "rule"):
        assert column in frame.columns, column
    assert len(frame) == 2 * 2 + 1 + 4  # 2 sizes x (faster_early, catches_up), small_data_gap, 4 overfits
    assert json.loads((run / "out" / "claims.json").read_text())[0]["claim"] == "faster_early"
    md = report.read_text().splitlines()
    assert md[2].startswith("## The paper's claims") and "| claim | size | where | paper (COCO) |" in md[4]
    assert any("36.8 vs pretrained 40.3" in line and "SUPPORTED" in line for line in md[:12])
    assert summary.startswith("the paper's claims (pretrained - scratch, bbox_AP):\n  interval: mean of the paired")
    assert "Student t with n-1 degrees of freedom" in summary
    assert "over seeds on this val set: the val images' own sampling error is not in it" in summary
    assert (run / "out" / "gap_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_at_a_low_ap_the_margin_is_at_most_a_quarter_of_it(tmp_path: Path) -> None:
    """Both arms near 2 AP, final gaps +0.35 and +0.45: within 1.5 AP, but 1.5 AP is most of the AP
    itself. The margin is capped at a quarter of pretrained's AP (0.5), and the verdict is open."""
    for init, finals in (("scratch", [1.6, 1.6]), ("pretrained", [1.95, 2.05])):
        for schedule in SCHEDULES:
            for seed, final in enumerate(finals):
                _write(tmp_path, Trial(init=init, schedule=schedule, base_lr=0.02, seed=seed, size=Size(200)),  # type: ignore[arg-type]
                       0.5, final * schedule / 3)
    _study(tmp_path, [0, 1], [200])
    found, _ = claims.judge(load_results(tmp_path), early_window=(0, 10))
    caught = next(c for c in found if c.claim == "catches_up")
    assert caught.margin == pytest.approx(0.25 * 2.0)
    assert (caught.ci_low, caught.ci_high) == (pytest.approx(0.4 - 12.7062 * 0.05, abs=1e-3),
                                               pytest.approx(0.4 + 12.7062 * 0.05, abs=1e-3))
    assert caught.verdict == "INCONCLUSIVE" and "capped at 0.5" in caught.rule


def test_faster_early_averages_each_seeds_gap_over_the_early_window(run: Path) -> None:
    """early_window (0, 30) on the 3x curve (evaluations every 10): each seed's gap is the mean of
    its gaps at 10, 20 and 30, and the interval is over those per-seed means."""
    found, _ = claims.judge(load_results(run), early_window=(0, 30))
    early = next(c for c in found if (c.claim, c.size) == ("faster_early", "1000"))

    def ap(init: str, seed: int, it: int) -> float:
        start = EARLY_SCRATCH[seed] + (EARLY_GAP[1000][seed] if init == "pretrained" else 0.0)
        return start + (FINALS[(1000, init, 3)][seed] - start) * (it - 10) / 50

    means = [np.mean([ap("pretrained", s, it) - ap("scratch", s, it) for it in (10, 20, 30)]) for s in (0, 1, 2)]
    iv = t_interval(means)
    assert early.n_seeds == 3 and early.iteration == 30 and early.window == "iterations 10-30 (3 evaluations)"
    assert (early.gap, early.ci_low, early.ci_high) == (pytest.approx(iv.mean), pytest.approx(iv.low),
                                                        pytest.approx(iv.high))
    assert early.gap != pytest.approx(_judge(run)[("faster_early", "1000", None)].gap)  # not the point at 10
    assert claims.where(early) == "3x, iterations 10-30 (3 evaluations)"
    assert "over iterations 10-30 (3 evaluations) of the 3x schedule" in claims.sentence(early)
    assert "early window [0, 30]" in early.rule
    # the window as the study file states it, or up to early_iteration by default
    assert claims.early_window([100, 400], 200, 250) == (100, 400)
    assert claims.early_window(None, 200, 250) == (0, 200) and claims.early_window(None, None, 250) == (0, 125)
