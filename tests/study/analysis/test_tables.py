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


def test_paired_gaps_and_samples_seen(run: Path) -> None:
    from study.analysis.claims import paired_gaps

    df = load_results(run)
    gaps = paired_gaps(df).set_index(["size", "schedule", "iteration"])
    early = gaps.loc[("1000", 3.0, 10)]  # pretrained 8 +- 0.1 vs scratch 2 +- 0.1, the same bump per seed
    assert early["n_seeds"] == 2 and early["gap"] == pytest.approx(6.0) and early["se"] == pytest.approx(0.0)
    assert gaps.loc[("100", 4.0, 80), "gap"] == pytest.approx(9 - 7)
    seen = tables.samples_seen(df).set_index(["size", "init", "schedule"])
    assert seen.loc[("1000", "pretrained", 3.0), "total_images_seen"] == 2 * 60 + 1000
    assert seen.loc[("1000", "scratch", 3.0), "total_images_seen"] == 2 * 60
    bad = tables.problems(df)
    assert bad["status"].tolist() == ["diverged"] and bad["iteration"].tolist() == [5]


def test_the_report_and_the_cli(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(run), "--out", str(run / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith("the paper's claims (pretrained - scratch, bbox_AP):")
    # two seeds with the same bump in both arms: the paired gaps have no spread, so the verdicts hold
    assert "On 1000 training images scratch catches up by 4x" in printed
    assert "On 100 training images pretrained overfits with longer training: its AP falls by 3.0 from 2x to 4x" \
        in printed
    assert "Not in the means: 1 trial(s) did not finish: scratch_2x_n1000_lr0.04_s2 diverged at iteration 5." \
        in printed
    md = (run / "out" / "report.md").read_text()
    assert md.startswith("# Study toy: scratch vs pretrained (complete)\n\n## The paper's claims")
    for name in ("learning_curves", "gap_curve", "final_vs_schedule", "samples_seen", "lr_sensitivity"):
        png = run / "out" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"({name}.png)" in md
    assert "data:image/png;base64," in (run / "out" / "report.html").read_text()
    for name in ("results.parquet", "results.csv", "claims.json"):
        assert (run / "out" / name).is_file(), name
    assert main(["analyze", str(run / "nope")]) == 2
    assert main(["analyze", str(run), "--tol", "0"]) == 2
    assert "--tol: 0.0 must be > 0 (AP)" in capsys.readouterr().err
    # a run in progress: one trial still running
    (run / "trials" / "scratch_1x_n100_lr0.02_s0" / "metrics.jsonl").write_text(
        json.dumps({"iteration": 10, "status": "running", "init": "scratch", "schedule": 1, "base_lr": 0.02,
                    "seed": 0, "train_images": 100, "data_fraction": None, "bbox_AP": 1.0}) + "\n")
    assert main(["analyze", str(run), "--out", str(run / "partial")]) == 0
    assert (run / "partial" / "report.md").read_text().startswith(
        "# Study toy: scratch vs pretrained (partial: 64 of 64 planned trials ended)")
