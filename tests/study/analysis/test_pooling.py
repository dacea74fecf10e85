"""Several runs of one study judged as one: the checks that they are one study, and the verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from study.analysis.pooling import pool_configs, pool_runs
from study.cli import main
from study.errors import ConfigError
from study.plan.trials import Size, Trial

UNIT = 20  # 1x = 20 iterations; each trial reports at iteration 10 and at 20
# Per seed: (pretrained's AP at iteration 10, scratch's). The early gaps are 6, 2 | 5, 3: two
# seeds alone give mean 4 with a 95% interval of ±25 (t(0.975, 1) = 12.7), the four together
# mean 4 ± 2.9 (t(0.975, 3) = 3.18, sd 1.83): above 0.
EARLY = {0: (10.0, 4.0), 1: (10.0, 8.0), 2: (9.0, 4.0), 3: (9.0, 6.0)}
FINAL = 30.0  # both arms end equal in every seed


def _study_yaml(name: str, seeds: list[int], base_lr: float = 0.02, cpus: int = 1) -> str:
    return (f"name: {name}\nmodel: {{backbone: resnet18, norm: gn}}\nsolver: {{unit_iters: {UNIT}, "
            f"drops_before_end: [10, 5], warmup_iters: 1}}\ngrid: {{schedule: [1], train_images: [1000], "
            f"seeds: {seeds}}}\nlr: {{values: [{base_lr}]}}\nanalysis: {{early_iteration: 10}}\n"
            f"resources: {{cpus_per_worker: {cpus}}}\n")


def _seen(init: str, iteration: int) -> dict[str, int]:
    pre = 1000 if init == "pretrained" else 0
    return {"images_seen": 2 * iteration, "instances_seen": 4 * iteration, "pixels_seen": 2 * iteration * 4096,
            "pretrain_images_seen": pre, "pretrain_instances_seen": pre, "pretrain_pixels_seen": pre * 64}


def _run(folder: Path, seeds: list[int], **config: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(_study_yaml(folder.name, seeds, **config))
    for seed in seeds:
        for init, early in zip(("pretrained", "scratch"), EARLY[seed]):
            trial = Trial(init=init, schedule=1, base_lr=0.02, seed=seed, size=Size(1000))  # type: ignore[arg-type]
            (folder / "trials" / trial.name()).mkdir(parents=True)
            rows = [{"iteration": 10, "status": "running", "bbox_AP": early},
                    {"iteration": UNIT, "status": "finished", "bbox_AP": FINAL}]
            (folder / "trials" / trial.name() / "metrics.jsonl").write_text("".join(
                json.dumps({"lr": 0.02, "loss": 1.0, **_seen(init, r["iteration"]), **trial.columns(), **r})
                + "\n" for r in rows))
    return folder


def test_configs_pool_when_only_name_seeds_and_resources_differ() -> None:
    import yaml

    a, b = yaml.safe_load(_study_yaml("a", [0, 1])), yaml.safe_load(_study_yaml("b", [3, 2], cpus=2))
    pooled = pool_configs({"a": a, "b": b})
    assert pooled["grid"]["seeds"] == [0, 1, 3, 2] and pooled["name"] == "a"
    assert a["grid"]["seeds"] == [0, 1]  # the runs' own configs are left as they were
    with pytest.raises(ConfigError, match=r"c is not the same study as a: lr\.values is \[0\.04\] there and "
                                          r"\[0\.02\] in a"):
        pool_configs({"a": a, "c": yaml.safe_load(_study_yaml("c", [2], base_lr=0.04))})
    with pytest.raises(ConfigError, match="seed 1 is in both a and d"):
        pool_configs({"a": a, "d": yaml.safe_load(_study_yaml("d", [1, 2]))})
    extra = yaml.safe_load(_study_yaml("e", [5]))
    extra["data"] = {"source": "coco"}  # a key only one of them has
    with pytest.raises(ConfigError, match="data.source is 'coco' there and None in a"):
        pool_configs({"a": a, "e": extra})


def test_pool_runs_reads_both_runs_into_one_frame(tmp_path: Path) -> None:
    pooled = pool_runs([_run(tmp_path / "a", [0, 1]), _run(tmp_path / "b", [2, 3])])
    assert pooled.seeds == {"a": [0, 1], "b": [2, 3]}
    assert pooled.describe() == "pooled from a (seeds 0, 1); b (seeds 2, 3)"
    df = pooled.results
    assert len(df) == 16 and df["trial"].nunique() == 8
    assert df.groupby("run")["seed"].unique().map(sorted).to_dict() == {"a": [0, 1], "b": [2, 3]}
    with pytest.raises(ConfigError, match="has no saved study config"):
        (tmp_path / "a" / "study.yaml").unlink()
        pool_runs([tmp_path / "a", tmp_path / "b"])


def test_study_analyze_judges_two_seed_sets_as_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _run(tmp_path / "a", [0, 1]), _run(tmp_path / "b", [2, 3])
    assert main(["analyze", str(a), "--out", str(tmp_path / "alone")]) == 0
    alone = {c["claim"]: c for c in json.loads((tmp_path / "alone" / "claims.json").read_text())}
    assert alone["faster_early"]["n_seeds"] == 2 and alone["faster_early"]["verdict"] == "INCONCLUSIVE"
    assert "run the same study file again under another name with other grid.seeds, then `study analyze RUN " \
           "RUN2 --out DIR`" in capsys.readouterr().out  # an INCONCLUSIVE verdict says how to add seeds

    assert main(["analyze", str(a), str(b), "--out", str(tmp_path / "pooled")]) == 0
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith("pooled from a (seeds 0, 1); b (seeds 2, 3)")
    found = {c["claim"]: c for c in json.loads((tmp_path / "pooled" / "claims.json").read_text())}
    early = found["faster_early"]
    assert early["n_seeds"] == 4 and early["gap"] == pytest.approx(4.0) and early["verdict"] == "SUPPORTED"
    assert early["ci_low"] == pytest.approx(4.0 - 3.182446 * pd.Series([6, 2, 5, 3]).std() / 2, abs=1e-4)
    assert found["catches_up"]["gap"] == pytest.approx(0.0) and found["catches_up"]["n_seeds"] == 4
    assert "study analyze RUN RUN2" not in printed  # every claim settled: no hint
    md = (tmp_path / "pooled" / "report.md").read_text()
    assert md.startswith("# Study a: scratch vs pretrained (complete, 2 runs pooled)")  # 8 of 8 planned
    assert "seeds:\n  - 0\n  - 1\n  - 2\n  - 3\n" in md  # the shared config with the seeds joined
    assert set(pd.read_parquet(tmp_path / "pooled" / "results.parquet")["run"]) == {"a", "b"}

    assert main(["analyze", str(a), str(b)]) == 2  # a pooled report belongs to neither run
    assert "--out: pooling several runs needs a report folder of its own" in capsys.readouterr().err
    assert main(["analyze", str(a), str(_run(tmp_path / "c", [1, 3])), "--out", str(tmp_path / "x")]) == 2
    assert "seed 1 is in both a and c" in capsys.readouterr().err


def test_a_seed_set_on_shared_storage_pools_with_a_local_one(tmp_path: Path, s3_uri: str) -> None:
    """The second seed set ran on a cluster (its results on S3), the first on a laptop."""
    from study.tune.storage import Store

    Store(s3_uri).put_tree(_run(tmp_path / "b", [2, 3]), "b")
    remote = s3_uri.replace("/runs?", "/runs/b?")
    assert main(["analyze", str(_run(tmp_path / "a", [0, 1])), remote, "--out", str(tmp_path / "pooled")]) == 0
    found = {c["claim"]: c for c in json.loads((tmp_path / "pooled" / "claims.json").read_text())}
    assert found["faster_early"]["n_seeds"] == 4 and found["faster_early"]["verdict"] == "SUPPORTED"


def test_runs_on_cpus_with_and_without_native_bf16_carry_a_caveat(tmp_path: Path) -> None:
    """`precision: auto` is bf16 on one kind of CPU and fp32 on the other: the pooled report says so."""
    from study import layout
    from study.analysis.pooling import precision_caveat

    a, b = _run(tmp_path / "a", [0, 1]), _run(tmp_path / "b", [2, 3])
    for run, native in ((a, True), (b, False)):
        info = layout.RunInfo(started="", finished="", seconds=1.0, machine={"cpus": 2, "cpu_native_bf16": native})
        (run / layout.RUN_INFO).write_text(info.to_json())
    pooled = pool_runs([a, b])
    assert pooled.describe().splitlines()[1] == (
        "Caveat: solver.precision is auto, and the runs trained in different precisions: bf16 in a (a CPU "
        "with native bf16), fp32 in b; the pooled interval mixes the two")
    both = {"a": {"cpu_native_bf16": True}, "b": {"cpu_native_bf16": True}}
    assert precision_caveat(pooled.config, both) is None  # the same kind of CPU
    assert precision_caveat({"solver": {"precision": "fp32"}}, {"a": {"cpu_native_bf16": True},
                                                               "b": {"cpu_native_bf16": False}}) is None
    assert precision_caveat(pooled.config, {"a": {"cpu_native_bf16": True}, "b": {}}) is None  # not recorded
