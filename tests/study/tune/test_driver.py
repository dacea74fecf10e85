"""The smoke study through real Ray Tune + Optuna, with and without forking, and with halving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.analysis.claims import load_claims
from study.analysis.results import final_rows, load_results
from study.cli import main
from study.config import load_study
from study.plan.budget import plan_study
from study.train.loop import TIMING_COLUMNS
from tests.conftest import REPO

SMOKE = REPO / "search_spaces" / "smoke.yaml"
TIMING = TIMING_COLUMNS


@pytest.mark.slow
def test_a_smoke_study_forked_equals_separate_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch, s3_uri: str) -> None:
    """The forked run keeps its results on S3 (moto's server, through pyarrow as on AWS): every
    trial works in a fresh local folder and exchanges checkpoints, fork points and metric rows only
    through S3, as trials on different cluster nodes do; Tune keeps its state there too. The
    separate runs use a plain folder. `study analyze` reads the S3 run back."""
    import ray

    from study.tune.driver import run_study
    from study.tune.storage import Store, fetch_run

    cfg = load_study(SMOKE)
    plan = plan_study(cfg)
    node = tmp_path / "node"
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(node))  # the "node's" disk: data and scratch folders
    run_uri = s3_uri.replace("/runs?", "/runs/forked?")
    try:
        assert main(["run", str(SMOKE), "--storage", s3_uri, "--name", "forked"]) == 0
        printed = capsys.readouterr().out
        grid = run_study(cfg, storage=tmp_path, name="separate", forking=False, verbose=0)
        assert main(["analyze", run_uri, "--out", str(tmp_path / "pulled")]) == 0
    finally:
        ray.shutdown()
    store = Store(s3_uri)
    assert "final bbox_AP at each cell's best LR" in printed and "study forked done" in printed
    assert f"report: {store.uri('forked', 'report', 'report.md')}" in printed
    assert store.read_text("forked/report/report.md").startswith("# Study smoke: scratch vs pretrained (complete)")
    assert (tmp_path / "pulled" / "report.md").read_text().startswith("# Study smoke: scratch vs pretrained")
    assert len(grid) == plan.trials and not grid.errors
    assert list((node / "work").iterdir()) == []  # trials cleaned up their local folders
    assert store.listdir("pretrained") == sorted(p.name for p in (tmp_path / "pretrained").glob("*.pt"))
    assert store.listdir("forked/tune")  # Tune's own state (restore, TensorBoard) on S3
    trunk = next(t for t in store.listdir("forked/trials") if "_2x_" in t)
    # the fork checkpoint is gone once its branch holds its own copy: one checkpoint per trial
    assert store.listdir(f"forked/trials/{trunk}") == ["attempt.json", "checkpoint.pt", "checksums.json",
                                                       "metrics.jsonl"]

    assert store.exists("forked/report/results.parquet") and store.exists("forked/run.json")
    # one seed: every claim is judged INCONCLUSIVE, and the report says so first
    pulled = load_claims(tmp_path / "pulled")
    assert len(pulled) == 2 + 2 and set(pulled["verdict"]) == {"INCONCLUSIVE"}  # 2 comparisons, 2 arms' overfits
    assert (pulled["n_seeds"] == 1).all() and pulled["ci_low"].isna().all()
    assert set(pulled["claim"]) == {"faster_early", "catches_up", "overfits"}
    md = store.read_text("forked/report/report.md").splitlines()
    assert md[2].startswith("## The paper's claims") and all("INCONCLUSIVE" in line for line in md[6:10])
    assert printed.index("the paper's claims") < printed.index("final bbox_AP at each cell's best LR")
    assert "With 1 seed there is no interval" in printed
    assert "Not judged: small_data_gap: one training-set size in this study" in printed
    assert json.loads(store.read_text("forked/report/claims.json"))[0]["verdict"] == "INCONCLUSIVE"

    copy = fetch_run(store, "forked", tmp_path / "copy")  # metric logs, fork records; no checkpoints
    assert (copy / "study.yaml").is_file() and (copy / "run.json").is_file()
    forked, separate = load_results(copy), load_results(tmp_path / "separate")
    assert sorted(forked["trial"].unique()) == sorted(separate["trial"].unique())
    assert len(forked["trial"].unique()) == plan.trials
    assert (final_rows(forked)["status"] == "finished").all()
    lrs = forked.groupby("init")["base_lr"].unique()  # one Optuna sample per (init, size, seed) group
    assert all(len(v) == 1 and cfg.lr.low <= v[0] <= cfg.lr.high for v in lrs)
    assert lrs["scratch"][0] != lrs["pretrained"][0]  # each group's sampler has its own seed

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

    assert trained(copy) == plan.iterations_forked < plan.iterations_separate
    assert trained(tmp_path / "separate") == plan.iterations_separate


@pytest.mark.slow
def test_a_smoke_study_with_ray_train_workers_inside_tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resources.workers: 2: each Tune trial drives a Ray Train job (TRAIN_DRIVER token,
    TuneReportCallback); branches start their worker group from the trunk's fork checkpoint.
    Storage is a URI: each Train worker pulls the trial's files into its own scratch folder and
    rank 0 pushes its rows and checkpoints; Ray Train keeps its checkpoints at the URI too."""
    import dataclasses

    import ray

    from study.tune.driver import run_study

    cfg = load_study(SMOKE)
    cfg = dataclasses.replace(cfg, name="smoke2w", resources=dataclasses.replace(cfg.resources, workers=2),
                              grid=dataclasses.replace(cfg.grid, init=("scratch",)))  # one lineage: trunk + branch
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / "node"))
    try:
        grid = run_study(cfg, storage=f"file://{tmp_path}", verbose=0)
    finally:
        ray.shutdown()
    assert len(grid) == 2 and not grid.errors
    assert all(r.metrics["status"] == "finished" for r in grid)  # forwarded by TuneReportCallback
    df = load_results(tmp_path / "smoke2w")
    assert (final_rows(df)["status"] == "finished").all() and df["trial"].nunique() == 2
    runs = sorted(p.name for p in (tmp_path / "smoke2w" / "train_runs").iterdir())
    assert runs == sorted(df["trial"].unique())  # one Ray Train run per trial
    for branch in df.loc[df["schedule"] == 1, "trial"].unique():
        fork = json.loads((tmp_path / "smoke2w" / "trials" / branch / "fork.json").read_text())
        assert fork["iteration"] == 3 and fork["trunk"].startswith(branch.split("_1x_")[0] + "_2x_")
    trunk_rows = df[(df["schedule"] == 2) & (df["iteration"] == 3)].set_index("init")["loss"]
    branch_rows = df[(df["schedule"] == 1) & (df["iteration"] == 3)].set_index("init")["loss"]
    assert branch_rows.to_dict() == trunk_rows.to_dict()  # the shared row, relabelled


def test_a_run_folder_is_not_silently_reused(tmp_path: Path) -> None:
    from study.errors import ConfigError
    from study.tune.driver import run_study

    smoke = load_study(REPO / "search_spaces" / "smoke.yaml")
    (tmp_path / "smoke" / "trials" / "some_trial").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds trials of this study: add --resume"):
        run_study(smoke, storage=tmp_path)
    (tmp_path / "smoke" / "study.yaml").write_text("name: smoke\n")
    with pytest.raises(ConfigError, match="holds a study with another configuration"):
        run_study(smoke, storage=tmp_path, resume=True)


@pytest.mark.slow
def test_a_smoke_study_with_halving_trains_the_plan_and_matches_forking(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Two LRs per cell, keep 0.5, through real Tune: both train to 1x (trunk segment to the
    fork point, then the branch), the better continues its trunk to 2x. The trials that ran are
    the plan's, the surviving LR's rows equal those of the same study forked without halving, and
    the report lists the dropped LR."""
    import dataclasses

    import ray

    from study.analysis.results import read_decisions
    from study.config import HalvingConfig, LRConfig
    from study.tune.driver import run_study

    smoke = load_study(SMOKE)
    lrs = LRConfig(values=(0.01, 0.02))
    halved = dataclasses.replace(smoke, name="halved", lr=dataclasses.replace(lrs, halving=HalvingConfig(0.5)))
    forked = dataclasses.replace(smoke, name="forked", lr=lrs)
    try:
        grid = run_study(halved, storage=tmp_path, verbose=0)
        run_study(forked, storage=tmp_path, verbose=0)
    finally:
        ray.shutdown()
    plan = plan_study(halved)
    assert len(grid) == plan.tune_trials == 2 * (2 * 2 + 1) and not grid.errors
    decisions = read_decisions(tmp_path / "halved")
    assert sorted((d.init, d.schedule, len(d.kept), len(d.dropped)) for d in decisions) == [
        ("pretrained", 1.0, 1, 1), ("scratch", 1.0, 1, 1)]
    for d in decisions:  # the kept LR is the one with the better 1x AP
        assert d.ranked[0][0] == d.kept[0] and d.ranked[0][1] >= (d.ranked[1][1] or -1)

    df = load_results(tmp_path / "halved")
    assert df["trial"].nunique() == plan.trials_run == 2 * (2 + 2)  # every trunk, every 1x branch
    finals = final_rows(df)
    dropped = finals[finals["status"] == "dropped"]
    assert sorted(zip(dropped["init"], dropped["base_lr"])) == sorted((d.init, d.dropped[0]) for d in decisions)
    assert (dropped["iteration"] == 3).all() and (dropped["schedule"] == 2).all()  # paused at the 1x fork point
    assert set(finals["status"]) == {"finished", "dropped"}
    # iterations trained, counted from the logs: 2 x (2 x 6 + 9) per group
    assert plan.iterations_halving == 2 * (2 * 6 + 9)
    trunks = dict(zip(finals["trial"], finals["iteration"]))
    counted = sum(it - (3 if "_1x_" in t else 0) for t, it in trunks.items())
    assert counted == plan.iterations_halving
    # no fork checkpoint is left behind by a dropped trunk, nor by a kept one
    assert not list((tmp_path / "halved" / "trials").glob("*/fork_*.pt"))

    # forked + halving = forked alone, row for row, for the trials halving ran to their end
    full = load_results(tmp_path / "forked")
    kept = finals.loc[finals["status"] == "finished", "trial"]
    key = ["trial", "iteration"]
    a = df[df["trial"].isin(kept)].sort_values(key).reset_index(drop=True)
    b = full[full["trial"].isin(kept)].sort_values(key).reset_index(drop=True)
    assert len(a) and a[key].equals(b[key])
    for column in ("loss", "bbox_AP", "segm_AP", "lr", "images_seen"):
        assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), abs=1e-5, nan_ok=True), column

    assert main(["analyze", str(tmp_path / "halved")]) == 0
    printed = capsys.readouterr().out
    assert "Halving dropped LR" in printed and "(complete)" in (tmp_path / "halved" / "report" / "report.md").read_text()
    assert "## Successive halving: LRs dropped early" in (tmp_path / "halved" / "report" / "report.md").read_text()


@pytest.mark.slow
def test_a_smoke_study_adds_seeds_while_its_claims_are_open(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One grid seed and `evidence: {max_seeds: 3}` through real Ray Tune: one seed gives no
    interval, so every claim is open at the first look and the searcher adds seed 1, then seed 2;
    the run stops at the third look and the report names each claim's look."""
    import ray
    import yaml

    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(name="evidence", evidence={"max_seeds": 3, "step": 1})
    space = tmp_path / "evidence.yaml"
    space.write_text(yaml.safe_dump(raw))
    try:
        assert main(["run", str(space), "--storage", str(tmp_path / "runs")]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    looks = [line for line in printed.splitlines() if line.startswith("look ")]
    assert [line.split(":")[0] for line in looks] == ["look 1 of 3 (1 seed)", "look 2 of 3 (2 seeds)",
                                                       "look 3 of 3 (3 seeds)"]
    assert looks[0].endswith("adding seed(s) 1") and looks[1].endswith("adding seed(s) 2")
    assert looks[2].endswith("no more seeds")
    run = tmp_path / "runs" / "evidence"
    finals = final_rows(load_results(run))
    assert sorted(set(finals["seed"])) == [0, 1, 2] and len(finals) == 3 * plan_study(load_study(SMOKE)).trials
    claims = load_claims(run)
    assert set(claims["looks"]) == {3} and set(claims["look"]) <= {1, 2, 3}
    assert (run / "report" / "report.md").read_text().startswith("# Study evidence: scratch vs pretrained (complete)")
