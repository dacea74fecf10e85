"""Plan arithmetic: cells, trials, lineages, fork points and iterations, exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from study.config import EvidenceConfig, GridConfig, HalvingConfig, LRConfig, load_study
from study.plan.budget import evaluation_warnings, evaluations, final_evaluations, format_plan, plan_study
from study.plan.evidence import up_to_look
from study.plan.schedule import fork_points
from study.plan.trials import sizes
from tests.conftest import REPO

PAPER = load_study(REPO / "search_spaces" / "paper_r50_gn.yaml")


def test_the_papers_grid_forks_into_044x_of_the_iterations() -> None:
    assert fork_points(PAPER.grid.schedule, PAPER.solver) == {
        1.0: 30_000, 2.0: 120_000, 3.0: 210_000, 4.0: 300_000, 5.0: 390_000}
    plan = plan_study(PAPER)
    assert (plan.cells, plan.trials, plan.lineages) == (36, 36, 6)  # 2 inits x 3 sizes x 1 seed x 1 LR
    assert plan.iterations_separate == 6 * 1_890_000  # 90k x (1 + ... + 6) per lineage
    assert plan.iterations_forked == 6 * 840_000  # 540k trunk + 5 x 60k tails
    assert plan.forked_ratio == pytest.approx(840 / 1890) and round(plan.forked_ratio, 2) == 0.44


def test_lr_samples_and_fractions_multiply_the_trials() -> None:
    cfg = dataclasses.replace(
        PAPER, grid=GridConfig(init=("scratch",), schedule=(2, 3), train_images=(1000,),
                               data_fraction=(0.1, 0.5), seeds=(0, 1)),
        lr=LRConfig(low=0.01, high=0.1, samples=3))
    plan = plan_study(cfg)
    assert (plan.cells, plan.lrs_per_cell, plan.trials, plan.lineages) == (12, 3, 36, 18)
    # 3x trunk 270k + the 2x branch from its first drop (120k) to its end (180k)
    assert plan.iterations_forked == 18 * (270_000 + 60_000)
    assert plan.iterations_separate == 18 * (180_000 + 270_000)
    assert [s.label for s in sizes(cfg.grid)] == ["1000", "frac0.1", "frac0.5"]


def test_the_printed_plan_has_the_hours() -> None:
    text = format_plan(PAPER, plan_study(PAPER), checkpoint_bytes=100_000_000, s_per_iter=0.5)
    assert "36 cells x 1 LRs = 36 trials in 6 lineages" in text
    assert "11,340,000 naive (every trial from 0), 5,040,000 forked (0.44x)" in text
    # 5.04M iterations x 0.5 s = 700 h of one trial's 8 GPUs
    assert "at 0.5 s/iteration forked: 700.0 trial-hours, 5,600.0 GPU-hours" in text
    assert "this study runs forked" in text and "halving" not in text.split("this study runs")[1].split("\n")[0]


def test_halving_over_the_papers_schedules_with_four_lrs() -> None:
    """4 LRs per cell, keep 0.5: 4 train to 1x, 2 continue to 2x, 1 to 3x..6x. Per group:
    4 x (30k trunk + 60k branch) + 2 x (90k + 60k) + 3 x (90k + 60k) + 1 x (540k - 390k)."""
    plan = plan_study(PAPER, lrs=4)
    per_group = 4 * 90_000 + 2 * 150_000 + 3 * 150_000 + 150_000
    assert per_group == 1_260_000
    assert plan.iterations_halving == 6 * per_group == 7_560_000
    assert plan.iterations_forked == 6 * 4 * 840_000 == 20_160_000
    assert plan.iterations_separate == 6 * 4 * 1_890_000 == 45_360_000
    assert round(plan.halving_ratio, 3) == 0.167 and not plan.halving
    text = format_plan(PAPER, plan, checkpoint_bytes=1, s_per_iter=0.5)
    assert ("45,360,000 naive (every trial from 0), 20,160,000 forked (0.44x), 7,560,000 forked + "
            "halving keep 0.5 (0.17x)") in text
    assert "LRs per cell at 1x 4, 2x 2, 3x 1, 4x 1, 5x 1, 6x 1" in text
    assert "at 0.5 s/iteration forked + halving: 1,050.0 trial-hours, 8,400.0 GPU-hours" in text


def test_a_study_with_halving_counts_its_segments_and_trials() -> None:
    cfg = dataclasses.replace(PAPER, lr=LRConfig(low=0.005, high=0.05, samples=8, halving=HalvingConfig(keep=0.25)))
    plan = plan_study(cfg)
    # 8 -> 2 -> 1 -> 1 -> 1 -> 1 candidates per group
    assert plan.halving and plan.keep == 0.25
    assert plan.iterations_halving == 6 * (8 * 90_000 + 2 * 150_000 + 3 * 150_000 + 150_000)
    # per group: a trunk segment and a branch per candidate per stage but the last, which is one segment
    assert plan.tune_trials == 6 * (2 * (8 + 2 + 1 + 1 + 1) + 1)
    # study trials with results: every candidate's trunk, the branches of the stages each reached
    assert plan.trials_run == 6 * (8 + 8 + 2 + 1 + 1 + 1)
    assert "this study runs forked + halving" in format_plan(cfg, plan, checkpoint_bytes=1)


def test_study_plan_cli_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from study.cli import main

    assert main(["plan", str(REPO / "search_spaces" / "default.yaml")]) == 0
    assert "18 cells x 1 LRs = 18 trials in 6 lineages" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {schedule: [1, 1]}\n")
    assert main(["plan", str(bad)]) == 2
    assert "bad.yaml: grid.schedule: [1.0, 1.0] lists a value twice" in capsys.readouterr().err
    bad.write_text("name: x\nlr: {low: 0.1, high: 0.01}\n")
    assert main(["plan", str(bad)]) == 2
    assert "bad.yaml: lr.high: need 0 < low < high, got low=0.1, high=0.01" in capsys.readouterr().err


def test_the_disk_estimate_counts_every_checkpoint_file() -> None:
    cfg = load_study(REPO / "search_spaces" / "smoke.yaml")
    plan = plan_study(cfg)
    # one per trial, the previous one of each running trial (all 4 may run at once), one per fork
    # point (2 trunks x 1 branch)
    assert plan.checkpoint_files == 4 + 4 + 2
    text = format_plan(cfg, plan, checkpoint_bytes=93_808_280)
    assert "disk: 938.1 MB of checkpoints at most (10 files of 93.8 MB: one per trial, its previous one while" in text
    assert "375.2 MB when done" in text
    several = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, workers=2))
    assert plan_study(several).checkpoint_files == 4 * (1 + 2) + 4 + 2  # and Ray Train's last 2 per trial
    two_at_once = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, max_concurrent_trials=2))
    assert plan_study(two_at_once).checkpoint_files == 4 + 2 + 2


def test_study_plan_warns_when_a_curve_has_too_few_points() -> None:
    default = load_study(REPO / "search_spaces" / "default.yaml")
    # every 100 of 250/500/750, and 12 and 24 before each end (after the last drop, 25 before it)
    assert [evaluations(s, default) for s in default.grid.schedule] == [3 + 2, 5 + 2, 8 + 2]
    assert [final_evaluations(s, default) for s in default.grid.schedule] == [3, 3, 3]
    assert evaluation_warnings(default) == []  # the shipped default has 10 on its longest schedule
    laptop = load_study(REPO / "search_spaces" / "laptop.yaml")
    assert [evaluations(s, laptop) for s in laptop.grid.schedule] == [5, 8, 11] and not evaluation_warnings(laptop)
    catch_up = load_study(REPO / "search_spaces" / "catch_up.yaml")
    assert [evaluations(s, catch_up) for s in catch_up.grid.schedule] == [3, 7, 11] and not evaluation_warnings(catch_up)
    text = format_plan(default, plan_study(default), checkpoint_bytes=1)
    assert ("evaluations: 1x 5 (3 after the last drop), 2x 7 (3 after the last drop), 3x 10 (3 after the last "
            "drop) (every 100 iterations, at the end, every 12 back from the end after the last drop)") in text
    sparse = dataclasses.replace(default, solver=dataclasses.replace(default.solver, eval_period=300,
                                                                     final_eval_period=None))
    assert [evaluations(s, sparse) for s in sparse.grid.schedule] == [1, 2, 3]  # 250 | 300, 500 | 300, 600, 750
    assert evaluation_warnings(sparse) == [
        "warning: the longest schedule (3x) has 3 evaluation(s) at solver.eval_period 300; its learning curve "
        "needs at least 6: lower solver.eval_period",
        "warning: the shortest schedule (1x) has 1 evaluation(s) at solver.eval_period 300; its learning curve "
        "needs at least 2: lower solver.eval_period",
        "warning: 1x, 2x, 3x evaluate(s) fewer than 2 times after the last LR drop, so the claims on final AP rest "
        "on one evaluation per seed: set solver.final_eval_period (e.g. a third of the last phase, 8 iterations)"]


def test_the_catch_up_study_is_the_default_on_two_classes_longer_and_adding_a_seed_while_open() -> None:
    """It shares the default's model and stand-in (so a backbone cached by `study run` is reused):
    what differs is the data's classes, the schedule's length, the seeds and where it judges."""
    default = load_study(REPO / "search_spaces" / "default.yaml")
    catch_up = load_study(REPO / "search_spaces" / "catch_up.yaml")
    assert (catch_up.model, catch_up.pretrain, catch_up.lr) == (default.model, default.pretrain, default.lr)
    assert catch_up.data.synthetic.classes == ("circle", "triangle") != default.data.synthetic.classes
    assert catch_up.grid.seeds == (0, 1, 2, 3) and catch_up.grid.schedule == (1, 3, 5)
    assert catch_up.evidence == EvidenceConfig(max_seeds=6, step=1, spending="obrien_fleming")
    plan, base = plan_study(catch_up), plan_study(default)
    # per lineage 2,500 + 2 x 170 iterations; 4 seeds at the first look, 5 at the second, 6 at the third
    assert (plan.trials, plan.iterations_forked, base.iterations_forked) == (24, 22_720, 5_460)
    assert [plan_study(up_to_look(catch_up, k)).iterations_forked for k in (1, 2)] == [28_400, 34_080]
    assert (catch_up.analysis.early_iteration, catch_up.analysis.margin) == (500, 3.5)
