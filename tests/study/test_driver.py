"""The smoke study through real Ray Tune + OptunaSearch, with and without forking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.cli import main
from study.config import load_study
from study.plan import plan_study
from study.results import final_rows, load_results

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
TIMING = {"images_per_s"}


@pytest.mark.slow
def test_a_smoke_study_forked_equals_separate_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import ray

    from study.driver import run_study

    cfg = load_study(SMOKE)
    plan = plan_study(cfg)
    try:
        assert main(["run", str(SMOKE), "--storage", str(tmp_path), "--name", "forked"]) == 0
        printed = capsys.readouterr().out
        grid = run_study(cfg, storage=tmp_path, name="separate", forking=False, verbose=0)
    finally:
        ray.shutdown()
    assert "final bbox_AP at each cell's best LR" in printed and "study forked done" in printed
    assert (tmp_path / "forked" / "report" / "report.md").read_text().startswith(
        "# Study smoke: scratch vs pretrained (complete)")
    assert len(grid) == plan.trials and not grid.errors

    forked, separate = load_results(tmp_path / "forked"), load_results(tmp_path / "separate")
    assert (tmp_path / "forked" / "report" / "results.parquet").is_file()
    assert (tmp_path / "forked" / "study.yaml").is_file() and (tmp_path / "forked" / "run.json").is_file()
    assert sorted(forked["trial"].unique()) == sorted(separate["trial"].unique())
    assert len(forked["trial"].unique()) == plan.trials
    assert (final_rows(forked)["status"] == "finished").all()
    lrs = forked["base_lr"].unique()
    assert len(lrs) == 1 and cfg.lr.low <= lrs[0] <= cfg.lr.high  # one Optuna sample per cell

    key = ["trial", "iteration"]
    a, b = forked.sort_values(key).reset_index(drop=True), separate.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    for column in sorted(set(a.columns) - TIMING - set(key)):
        if a[column].dtype.kind == "f":
            assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), abs=1e-5, nan_ok=True), column
        else:
            assert a[column].tolist() == b[column].tolist(), column

    def trained(run: Path) -> int:
        total = 0
        for trial in (run / "trials").iterdir():
            fork = trial / "fork.json"
            start = json.loads(fork.read_text())["iteration"] if fork.is_file() else 0
            total += max(r["iteration"] for r in map(json.loads, (trial / "metrics.jsonl").open())) - start
        return total

    assert trained(tmp_path / "forked") == plan.iterations_forked < plan.iterations_separate
    assert trained(tmp_path / "separate") == plan.iterations_separate


@pytest.mark.slow
def test_a_smoke_study_with_ray_train_workers_inside_tune(tmp_path: Path) -> None:
    """resources.workers: 2: each Tune trial drives a Ray Train job (TRAIN_DRIVER token,
    TuneReportCallback); branches start their worker group from the trunk's fork checkpoint."""
    import dataclasses

    import ray

    from study.driver import run_study

    cfg = load_study(SMOKE)
    cfg = dataclasses.replace(cfg, name="smoke2w", resources=dataclasses.replace(cfg.resources, workers=2))
    try:
        grid = run_study(cfg, storage=tmp_path, verbose=0)
    finally:
        ray.shutdown()
    assert len(grid) == 4 and not grid.errors
    assert all(r.metrics["status"] == "finished" for r in grid)  # forwarded by TuneReportCallback
    df = load_results(tmp_path / "smoke2w")
    assert (final_rows(df)["status"] == "finished").all() and df["trial"].nunique() == 4
    runs = sorted(p.name for p in (tmp_path / "smoke2w" / "train_runs").iterdir())
    assert runs == sorted(df["trial"].unique())  # one Ray Train run per trial
    for branch in df.loc[df["schedule"] == 1, "trial"].unique():
        fork = json.loads((tmp_path / "smoke2w" / "trials" / branch / "fork.json").read_text())
        assert fork["iteration"] == 3 and fork["trunk"].startswith(branch.split("_1x_")[0] + "_2x_")
    trunk_rows = df[(df["schedule"] == 2) & (df["iteration"] == 3)].set_index("init")["loss"]
    branch_rows = df[(df["schedule"] == 1) & (df["iteration"] == 3)].set_index("init")["loss"]
    assert branch_rows.to_dict() == trunk_rows.to_dict()  # the shared row, relabelled
