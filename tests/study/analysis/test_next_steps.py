"""The next step for each claim a study left open: the shipped space that answers it, priced from
the run's own measured speed."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from study.analysis.claims import judge
from study.analysis.next_steps import next_steps
from study.analysis.report import write_report
from study.analysis.results import load_results, run_config
from study.config import load_study, study_from_dict
from study.layout import read_run_info
from study.plan.budget import evaluations_forked, plan_study
from study.plan.evidence import up_to_look
from tests.conftest import REPO

RUN = REPO / "docs" / "results" / "runs" / "default_avx2_s6to11_20261206"  # the default, seeds 6-11


def _claims(run: Path):
    found, _ = judge(load_results(run), early_window=(0, 400), margin=1.5)
    return found


def test_scratch_not_caught_up_points_to_catch_up_yaml_priced_at_this_runs_speed() -> None:
    cfg = study_from_dict(run_config(RUN))
    info = read_run_info(RUN)
    found = _claims(RUN)
    assert {c.claim: c.verdict for c in found}["catches_up"] == "CONTRADICTED"
    steps = next_steps(found, cfg, info)
    assert [(s.claim, s.space) for s in steps] == [("catches_up", "search_spaces/catch_up.yaml")]
    catch_up = load_study(REPO / "search_spaces" / "catch_up.yaml")
    other, most = plan_study(catch_up).iterations_forked, plan_study(up_to_look(catch_up, 2)).iterations_forked
    this = plan_study(cfg).iterations_forked
    assert (steps[0].iterations, steps[0].most, this) == (other, most, 10_920) and (other, most) == (22_720, 34_080)
    minutes = info.phases_s["trials"] / this * other / 60  # the same pre-training: cached
    upto = info.phases_s["trials"] / this * most / 60
    assert f"about {minutes:.0f} min ({upto:.0f} with every look) on this machine" in steps[0].text()
    assert "pre-training cached" in steps[0].text() and "(up to 34,080 if every look is needed)" in steps[0].text()
    # a settled claim has no next step; without run.json there is no price; catch_up.yaml is its own answer
    assert next_steps([c for c in found if c.verdict == "SUPPORTED"], cfg, info) == []
    assert "not priced: a single run's run.json" in next_steps(found, cfg, None)[0].cost
    assert next_steps(found, dataclasses.replace(cfg, name="catch_up"), info) == []


def test_the_report_and_the_summary_end_with_the_next_steps(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    report, summary = write_report(run, tmp_path / "report")
    tail = summary.strip().splitlines()
    assert tail[-2] == "next steps (the claims this study left open):"
    assert tail[-1].startswith("- Next for catches_up on 3000 images: `study run search_spaces/catch_up.yaml`")
    assert "## Next steps (the claims this study left open)" in report.read_text()


@pytest.mark.parametrize("space", ["catch_up.yaml", "laptop.yaml"])
def test_the_spaces_named_as_next_steps_are_shipped(space: str) -> None:
    assert load_study(REPO / "search_spaces" / space).name == Path(space).stem


def test_the_price_splits_training_from_evaluation_as_the_spaces_evaluate_at_different_rates() -> None:
    """The default evaluates every 100 iterations, catch_up.yaml every 250: priced per iteration
    alone, a default run would overprice it. With the evaluations' own seconds, each part scales
    by its own count."""
    df = load_results(RUN)
    cfg, info = study_from_dict(run_config(RUN)), read_run_info(RUN)
    eval_s = float(df["eval_s"].sum())
    step = next_steps(_claims(RUN), cfg, info, eval_s=eval_s)[0]
    catch_up = load_study(REPO / "search_spaces" / "catch_up.yaml")
    evaluating = eval_s / cfg.resources.max_concurrent_trials
    per_iter = (info.phases_s["trials"] - evaluating) / plan_study(cfg).iterations_forked
    per_eval = evaluating / evaluations_forked(cfg)
    first = (per_iter * plan_study(catch_up).iterations_forked + per_eval * evaluations_forked(catch_up)) / 60
    assert f"about {first:.0f} min" in step.text() and f"{per_eval:.1f} s per evaluation" in step.text()
    flat = next_steps(_claims(RUN), cfg, info)[0].text()  # without the split: every second per iteration
    assert first < float(flat.split("about ")[1].split(" min")[0])
    # the catch-up study: 11 evaluations per 2,500-iteration trunk, 2 per branch, 8 lineages at its first
    # look; that default run (six seeds, before the final window): 8 per 750-iteration trunk, 2 + 1
    assert (evaluations_forked(catch_up), evaluations_forked(cfg)) == (8 * 15, 12 * 11)
