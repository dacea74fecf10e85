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
