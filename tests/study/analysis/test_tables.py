"""The convergence analyses on constructed results with known answers, and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from study.analysis import tables
from study.analysis.results import final_rows, load_results
from study.cli import main
from study.plan.trials import Size, Trial

UNIT = 20  # 1x = 20 iterations; every trial reports at iteration 10 and at its end


def _write(run: Path, trial: Trial, rows: list[dict]) -> None:
    folder = run / "trials" / trial.name()
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({"lr": trial.base_lr, **trial.columns(), **row}) + "\n")


def _trial(run: Path, init: str, schedule: int, size: int, lr: float, seed: int, final: float,
           early: float) -> None:
    end = schedule * UNIT
    pre = 1000 if init == "pretrained" else 0
    seen = {"pretrain_images_seen": pre, "pretrain_instances_seen": pre, "pretrain_pixels_seen": pre * 64}
    _write(run, Trial(init=init, schedule=schedule, base_lr=lr, seed=seed, size=Size(size)), [
        {"iteration": 10, "status": "running", "loss": 2.0, "bbox_AP": early, "images_seen": 20,
         "instances_seen": 40, "pixels_seen": 20 * 4096, **seen},
        {"iteration": end, "status": "finished", "loss": 1.0, "bbox_AP": final, "images_seen": 2 * end,
         "instances_seen": 4 * end, "pixels_seen": 2 * end * 4096, **seen}])


@pytest.fixture
def run(tmp_path: Path) -> Path:
    finals = {  # (size, init) -> final bbox AP per schedule 1x..4x, at LR 0.02
        (1000, "pretrained"): [30, 32, 33, 33],
        (1000, "scratch"): [20, 28, 32.8, 34],  # within 0.5 of pretrained's best (33) at 3x
        (100, "pretrained"): [10, 12, 11, 9],  # peaks at 2x, then overfits
        (100, "scratch"): [3, 5, 6, 7],  # never catches up
    }
    for (size, init), values in finals.items():
        for schedule, final in enumerate(values, start=1):
            for seed, bump in ((0, -0.1), (1, 0.1)):
                early = 8.0 if init == "pretrained" else 2.0
                _trial(tmp_path, init, schedule, size, 0.02, seed, final + bump, early + bump)
                _trial(tmp_path, init, schedule, size, 0.04, seed, final - 5 + bump, early)  # worse LR
    # a diverged seed at the worse LR: listed, never averaged in
    _write(tmp_path, Trial(init="scratch", schedule=2, base_lr=0.04, seed=2, size=Size(1000)),
           [{"iteration": 5, "status": "diverged", "loss": math.nan, "images_seen": 10}])
    (tmp_path / "study.yaml").write_text(
        f"name: toy\nmodel: {{backbone: resnet18, norm: gn}}\nsolver: {{unit_iters: {UNIT}, "
        "drops_before_end: [10, 5], warmup_iters: 1}\ngrid: {schedule: [1, 2, 3, 4], train_images: "
        "[1000, 100], seeds: [0, 1]}\nlr: {values: [0.02, 0.04]}\n")  # 64 planned trials
    return tmp_path


def test_load_results_is_a_tidy_table(run: Path) -> None:
    df = load_results(run)
    assert len(df) == 4 * 4 * 2 * 2 * 2 + 1 and df["trial"].nunique() == 65
    for column in ("init", "schedule", "train_images", "base_lr", "seed", "norm", "backbone", "iteration",
                   "lr", "loss", "bbox_AP", "images_seen", "instances_seen", "pixels_seen", "status"):
        assert column in df.columns, column
    assert set(df["norm"]) == {"gn"} and set(df["size"]) == {"1000", "100"}
    assert final_rows(df)["status"].value_counts().to_dict() == {"finished": 64, "diverged": 1}


def test_final_table_takes_the_best_lr_and_skips_the_diverged(run: Path) -> None:
    df = load_results(run)
    table = tables.final_table(df).set_index(["size", "init", "schedule"])
    assert (table["base_lr"] == 0.02).all() and (table["seeds"] == 2).all()
    assert table.loc[("1000", "scratch", 3.0), "mean"] == pytest.approx(32.8)
    assert table.loc[("1000", "scratch", 3.0), "spread"] == pytest.approx(0.1)
    sens = tables.lr_sensitivity(df).set_index(["size", "init", "schedule", "base_lr"])
    assert sens.loc[("1000", "scratch", 2.0, 0.04), "seeds"] == 2  # the diverged seed 2 is not in
    assert sens.loc[("1000", "scratch", 2.0, 0.04), "mean"] == pytest.approx(23.0)
    assert tables.table1(tables.final_table(df))["1000"].loc["scratch", "3x"] == "32.8 ± 0.1"


def test_catch_up_at_3x_and_no_catch_up(run: Path) -> None:
    up = tables.catch_up(tables.final_table(load_results(run))).set_index("size")
    assert up.loc["1000", "catch_up_schedule"] == 3.0
    assert up.loc["1000", "pretrained_best"] == pytest.approx(33.0)
    assert math.isnan(up.loc["100", "catch_up_schedule"])
    assert up.loc["100", "scratch_best"] == pytest.approx(7.0) and up.loc["100", "scratch_best_schedule"] == 4.0
    strict = tables.catch_up(tables.final_table(load_results(run)), tol=0.1).set_index("size")
    assert strict.loc["1000", "catch_up_schedule"] == 4.0  # 32.8 is not within 0.1 (or 0.1 spread) of 33


def test_overfitting_finds_the_peak_then_fall(run: Path) -> None:
    over = tables.overfitting(tables.final_table(load_results(run))).set_index(["size", "init"])
    assert over.loc[("100", "pretrained"), "degrades"]
    assert over.loc[("100", "pretrained"), "peak_schedule"] == 2.0
    assert over.loc[("100", "pretrained"), "fall"] == pytest.approx(3.0)
    assert not over.loc[("1000", "pretrained"), "degrades"]  # 33 -> 33: flat, not a fall
    assert not over.loc[("100", "scratch"), "degrades"]


def test_early_gap_and_samples_seen(run: Path) -> None:
    df = load_results(run)
    gap = tables.early_gap(df, UNIT, fractions=(0.5, 1.0))
    first = gap[gap["fraction"] == 0.5].set_index("size")
    assert first.loc["1000", "iteration"] == 10 and first.loc["1000", "gap"] == pytest.approx(6.0)
    seen = tables.samples_seen(df).set_index(["size", "init", "schedule"])
    assert seen.loc[("1000", "pretrained", 3.0), "total_images_seen"] == 2 * 60 + 1000
    assert seen.loc[("1000", "scratch", 3.0), "total_images_seen"] == 2 * 60
    bad = tables.problems(df)
    assert bad["status"].tolist() == ["diverged"] and bad["iteration"].tolist() == [5]


def test_findings_and_the_report(run: Path, capsys: pytest.CaptureFixture) -> None:
    text = tables.findings(load_results(run), UNIT)
    assert ("On 1000 training images, scratch catches up with pretrained at 3x: 32.8 vs 33.0 bbox_AP "
            "(pretrained's best, at 3x; tolerance 0.5 AP or the seed spread).") in text
    assert ("On 100 training images, scratch does not catch up: its best is 7.0 bbox_AP at 4x "
            "against pretrained's 12.0 at 2x.") in text
    assert "Pretrained on 100 images peaks at 2x (12.0 bbox_AP) and falls to 9.0 at 4x: it overfits " \
           "with longer training." in text
    assert "Not in the averages: 1 diverged trial(s) (listed under problems)." in text
    assert main(["analyze", str(run), "--out", str(run / "out")]) == 0
    printed = capsys.readouterr().out
    assert "scratch catches up with pretrained at 3x" in printed
    md = (run / "out" / "report.md").read_text()
    assert md.startswith("# Study toy: scratch vs pretrained (complete)")
    for name in ("learning_curves", "final_vs_schedule", "samples_seen", "lr_sensitivity"):
        png = run / "out" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and "![" in md and f"({name}.png)" in md
    assert "data:image/png;base64," in (run / "out" / "report.html").read_text()
    assert (run / "out" / "results.parquet").is_file() and (run / "out" / "results.csv").is_file()
    assert main(["analyze", str(run / "nope")]) == 2
    assert main(["analyze", str(run), "--out", str(run / "strict"), "--tol", "0.1"]) == 0
    assert "scratch catches up with pretrained at 4x" in capsys.readouterr().out  # printed with --tol too
    # a run in progress: one trial still running
    (run / "trials" / "scratch_1x_n100_lr0.02_s0" / "metrics.jsonl").write_text(
        json.dumps({"iteration": 10, "status": "running", "init": "scratch", "schedule": 1, "base_lr": 0.02,
                    "seed": 0, "train_images": 100, "data_fraction": None, "bbox_AP": 1.0}) + "\n")
    assert main(["analyze", str(run), "--out", str(run / "partial")]) == 0
    assert (run / "partial" / "report.md").read_text().startswith(
        "# Study toy: scratch vs pretrained (partial: 64 of 64 planned trials ended)")
