"""The sequential design: Lan-DeMets boundaries against published values, each claim judged at the
look where it settles (and kept there), the final window, and the report naming the look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.analysis import claims
from study.analysis.report import write_report
from study.analysis.results import load_results
from study.analysis.sequential import first_verdict, judge_looks, judge_study
from study.plan.looks import boundaries, plan_looks
from study.config import study_from_dict
from study.plan.trials import Size, Trial

# Jennison and Turnbull (2000), Table 7.6 / gsDesign: one-sided 0.025, five equally spaced looks
OBRIEN_FLEMING_5 = (4.877, 3.357, 2.680, 2.290, 2.031)
POCOCK_5 = (2.438, 2.427, 2.410, 2.397, 2.386)


def test_boundaries_match_the_published_lan_demets_values() -> None:
    fractions = [0.2, 0.4, 0.6, 0.8, 1.0]
    assert boundaries(fractions, "obrien_fleming") == pytest.approx(OBRIEN_FLEMING_5, abs=2e-3)
    assert boundaries(fractions, "pocock") == pytest.approx(POCOCK_5, abs=2e-3)
    with pytest.raises(ValueError, match="increase to 1"):
        boundaries([0.5, 0.4, 1.0], "pocock")


def test_one_look_is_the_fixed_95_percent_design_and_more_looks_spend_less_each() -> None:
    (only,) = plan_looks([5], "obrien_fleming")
    assert only.level == pytest.approx(0.95)
    first, last = plan_looks([4, 5], "obrien_fleming")
    assert (first.seeds, last.seeds) == (4, 5)
    assert 0.95 < last.level < first.level < 0.99  # nearly all of it kept for the last look


# ----------------------------------------------------------------------------------------------------

UNIT = 20  # 1x = 20 iterations, the LR drops at 10 and 16, evaluations every 5 and at 18
SOLVER = {"unit_iters": UNIT, "drops_before_end": [10, 4], "warmup_iters": 1, "eval_period": 5,
          "final_eval_period": 2}


def _config(seeds: list[int], evidence: bool = True) -> dict:
    return {"name": "toy", "model": {"backbone": "resnet18", "norm": "gn"}, "solver": SOLVER,
            "grid": {"schedule": [1], "train_images": [100], "seeds": seeds}, "lr": {"values": [0.02]},
            "analysis": {"early_window": [5, 10], "margin": 1.5},
            **({"evidence": {"max_seeds": len(seeds) + 1, "step": 1}} if evidence else {})}


def _write(run: Path, seed: int, early_gap: float, final_gaps: dict[int, float]) -> None:
    """Both arms of one seed: scratch at 20 + iteration, pretrained ahead by `early_gap` up to
    iteration 10 and by final_gaps[it] (default 0) after it."""
    for init in ("scratch", "pretrained"):
        trial = Trial(init=init, schedule=1.0, base_lr=0.02, seed=seed, size=Size(100))  # type: ignore[arg-type]
        folder = run / "trials" / trial.name()
        folder.mkdir(parents=True)
        rows = []
        for it in (5, 10, 15, 18, 20):  # every 5, and the final window 18, 20 (the last drop is at 16)
            lead = early_gap if it <= 10 else final_gaps.get(it, 0.0)
            ap = 20.0 + it + (lead if init == "pretrained" else 0.0)
            rows.append({"iteration": it, "status": "finished" if it == 20 else "running", "lr": 0.02,
                         **trial.columns(), "bbox_AP": ap, "images_seen": 2 * it,
                         "instances_seen": 4 * it, "pixels_seen": 2 * it * 4096})
        folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _by_name(found: list[claims.Claim]) -> dict[str, claims.Claim]:
    return {c.claim + (f" ({c.init})" if c.init else ""): c for c in found}


def test_a_claim_settled_at_the_first_look_stays_settled_and_an_open_one_is_judged_again(tmp_path: Path) -> None:
    # early: a clear lead in seeds 0-3 (settled at look 1); seed 4's -30 would undo it at look 2
    # final: +0.2 +-0.9 spread over 4 seeds (open at look 1: its 97.6% interval passes 1.5), then a
    # fifth seed that narrows it inside the margin
    finals = {0: 1.0, 1: -0.5, 2: 0.9, 3: -0.6, 4: 0.2}
    for seed, early in enumerate([3.0, 3.2, 2.9, 3.1, -30.0]):
        _write(tmp_path, seed, early, {18: finals[seed], 20: finals[seed]})
    cfg = study_from_dict(_config([0, 1, 2, 3]))
    found = _by_name(judge_study(load_results(tmp_path), cfg)[0])
    early, caught = found["faster_early"], found["catches_up"]
    assert (early.verdict, early.look, early.looks, early.n_seeds) == ("SUPPORTED", 1, 2, 4)
    assert early.level == pytest.approx(plan_looks([4, 5], "obrien_fleming")[0].level)
    assert (caught.verdict, caught.look, caught.n_seeds) == ("SUPPORTED", 2, 5)
    fixed4 = claims.t_interval([finals[s] for s in range(4)], early.level)
    assert fixed4.high > 1.5  # why look 1 left it open
    # the report's table names the look and its level
    (tmp_path / "study.yaml").write_text(json.dumps(_config([0, 1, 2, 3])))
    _, summary = write_report(tmp_path, tmp_path / "report")
    assert "1 of 2 (97.6%)" in summary and "2 of 2 (95.7%)" in summary
    assert "look 2 of 2" in claims.sentence(caught)


def test_a_look_whose_seeds_have_not_all_ended_is_not_judged(tmp_path: Path) -> None:
    for seed in range(4):
        _write(tmp_path, seed, 3.0 + 0.1 * seed, {18: 5.0 + 0.1 * seed, 20: 5.0})
    _write(tmp_path, 4, 3.0, {})
    running = tmp_path / "trials" / Trial(init="scratch", schedule=1.0, base_lr=0.02, seed=4,
                                          size=Size(100)).name() / "metrics.jsonl"  # type: ignore[arg-type]
    running.write_text(running.read_text().splitlines()[0] + "\n")  # seed 4's scratch arm still at 5
    looks = plan_looks([4, 5], "obrien_fleming")
    found = _by_name(judge_looks(load_results(tmp_path), [0, 1, 2, 3, 4], looks, early_window=(5, 10),
                                 margin=1.5, last_drops={1.0: 16})[0])
    assert {c.look for c in found.values()} == {1}
    assert found["catches_up"].verdict == "CONTRADICTED"  # +5 AP: settled, no fifth seed needed


def test_the_final_window_averages_each_seed_over_the_evaluations_after_the_last_drop(tmp_path: Path) -> None:
    gaps = {0: (1.0, 3.0), 1: (0.0, 2.0), 2: (2.0, 2.0)}  # the gap at 18 and at 20
    for seed, (at18, at20) in gaps.items():
        _write(tmp_path, seed, 3.0, {18: at18, 20: at20})
    df = load_results(tmp_path)
    cfg = study_from_dict(_config([0, 1, 2], evidence=False))
    windowed = _by_name(judge_study(df, cfg)[0])["catches_up"]
    assert windowed.gap == pytest.approx((2.0 + 1.0 + 2.0) / 3)  # each seed's mean of 18 and 20
    assert windowed.window == "iterations 18-20 (2 evaluations)" and windowed.look is None
    assert claims.where(windowed) == "1x, final iterations 18-20 (2 evaluations)"
    last = _by_name(claims.judge(df, early_window=(5, 10), margin=1.5)[0])["catches_up"]
    assert last.gap == pytest.approx((3.0 + 2.0 + 2.0) / 3) and last.window == ""  # the last evaluation alone


def test_first_verdict_stops_at_the_first_settled_look() -> None:
    looks = plan_looks([3, 5], "obrien_fleming")
    verdict, look = first_verdict([5.0, 5.1, 4.9, -20.0, -20.0], looks, claims.difference_verdict)
    assert (verdict, look.number) == ("SUPPORTED", 1)  # the two later seeds never count
    verdict, look = first_verdict([1.0, -1.0, 0.5, 0.2, -0.3], looks, claims.difference_verdict)
    assert (verdict, look.number) == ("INCONCLUSIVE", 2)
