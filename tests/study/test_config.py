from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.config import (GridConfig, LRConfig, StudyConfig, dump_study, load_study,
                          study_from_dict)
from study.errors import ConfigError
from tests.conftest import REPO


def test_defaults_are_the_paper_protocol() -> None:
    cfg = study_from_dict({"name": "x"})
    assert cfg.model.backbone == "resnet50" and cfg.model.norm == "gn"
    assert (cfg.model.min_size, cfg.model.max_size) == (800, 1333)
    s = cfg.solver
    assert (s.base_lr, s.ims_per_batch, s.momentum, s.weight_decay) == (0.02, 16, 0.9, 1e-4)
    assert (s.unit_iters, s.drops_before_end, s.warmup_iters) == (90_000, (60_000, 20_000), 500)
    assert s.weight_decay_norm == 0.0 and s.clip_grad_norm is None
    assert cfg.grid.init == ("scratch", "pretrained")
    assert cfg.lr.values == (0.02,) and not cfg.lr.is_search


# (the study as YAML-parsed data, the key the error must name, a fragment of its message)
BAD = [
    ({"name": "x", "modle": {}}, "modle", "unknown key; allowed keys here: name, data, model"),
    ({"name": "x", "solver": {"base_lrr": 0.1}}, "solver.base_lrr", "unknown key"),
    ({"name": "x", "model": {"norm": "gm"}}, "model.norm",
     "'gm' is not valid: expected one of 'gn', 'syncbn', 'bn', 'frozen_bn'"),
    ({"name": "x", "model": {"backbone": "resnet51"}}, "model.backbone", "'resnet18', 'resnet34'"),
    ({"name": "x", "solver": {"base_lr": "fast"}}, "solver.base_lr", "'fast' is not valid: expected a number"),
    ({"name": "x", "solver": {"base_lr": -0.1}}, "solver.base_lr", "must be > 0"),
    ({"name": "x", "solver": {"ims_per_batch": 2.5}}, "solver.ims_per_batch", "expected an integer"),
    ({"name": "x", "solver": {"drops_before_end": [20000, 60000]}}, "solver.drops_before_end",
     "strictly decreasing"),
    ({"name": "x", "grid": {"schedule": []}}, "grid.schedule", "the grid is empty"),
    ({"name": "x", "grid": {"seeds": []}}, "grid.seeds", "the grid is empty"),
    ({"name": "x", "grid": {"init": ["scratch", "imagenet"]}}, "grid.init",
     "'imagenet' is not valid: expected one of 'scratch', 'pretrained'"),
    ({"name": "x", "grid": {"schedule": 2}}, "grid.schedule", "expected a list"),
    ({"name": "x", "grid": {"schedule": [1, 1]}}, "grid.schedule", "lists a value twice"),
    ({"name": "x", "grid": {"train_images": [0]}}, "grid.train_images", "must be > 0 or 'full'"),
    ({"name": "x", "grid": {"train_images": ["all"]}}, "grid.train_images",
     "expected an integer or one of 'full'"),
    ({"name": "x", "grid": {"train_images": [], "data_fraction": []}}, "grid.train_images",
     "no training-set size"),
    ({"name": "x", "grid": {"data_fraction": [1.5]}}, "grid.data_fraction", "must be in (0, 1]"),
    ({"name": "x", "lr": {"values": [0.02], "low": 0.01, "high": 0.1}}, "lr.values", "not both"),
    ({"name": "x", "lr": {}}, "lr.values", "not neither"),
    ({"name": "x", "lr": {"low": 0.1, "high": 0.01}}, "lr.high", "need 0 < low < high"),
    ({"name": "x", "model": {"norm": "syncbn"}}, "model.norm", "'syncbn' needs GPUs"),
    ({"name": "x", "lr": {"values": [0.02], "halving": {"keep": 0.5}}}, "lr.halving",
     "there is 1: give at least 2 values or samples"),
    ({"name": "x", "lr": {"values": [0.01, 0.02], "halving": {"keep": 1.0}}}, "lr.halving.keep",
     "must be between 0 and 1"),
    ({"name": "x", "lr": {"low": 0.01, "high": 0.1, "sampler": "cmaes"}}, "lr.sampler",
     "expected one of 'gp', 'qmc'"),
    ({"name": "x", "data": {"source": "coco"}}, "data.train", "required when source is 'coco'"),
    ({"name": "x", "data": {"source": "coco", "train": {"annotations": "a.json"},
                            "val": {"annotations": "b.json", "images": "b"}}},
     "data.train.images", "required key is missing"),
    ({"name": "x", "resources": {"workers": 0}}, "resources.workers", "must be > 0"),
    ({"name": "x", "data": {"filter_empty": "yes"}}, "data.filter_empty", "expected true or false"),
    ({"name": "x", "analysis": {"margin": 0}}, "analysis.margin", "must be > 0 (AP)"),
    ({"name": "x", "analysis": {"early_iteration": 0}}, "analysis.early_iteration", "must be > 0"),
    ({"name": "x", "analysis": {"early_window": [400, 100]}}, "analysis.early_window", "0 <= first <= last"),
    ({"name": "x", "analysis": {"early_window": [100]}}, "analysis.early_window", "[first, last]"),
    ({"name": "x", "analysis": {"early_window": [0, 90_001]}}, "analysis.early_window",
     "ends past the end of the longest schedule (iteration 90000)"),
    ({"name": "x", "analysis": {"early_iteration": 90_001}}, "analysis.early_iteration",
     "past the end of the longest schedule (iteration 90000)"),
    ({"name": "x", "analysis": {"tol": 1}}, "analysis.tol", "allowed keys here: early_iteration, early_window, margin"),
    ({"name": "x", "solver": {"final_eval_period": 0}}, "solver.final_eval_period", "must be > 0, or null"),
    ({"name": "x", "evidence": {"max_seeds": 1}}, "evidence.max_seeds", "must be > 1"),
    ({"name": "x", "evidence": {"max_seeds": 4, "step": 0}}, "evidence.step", "must be > 0"),
    ({"name": "x", "grid": {"seeds": [0, 1, 2]}, "evidence": {"max_seeds": 3}}, "evidence.max_seeds",
     "must exceed the 3 grid.seeds"),
    ({"name": "x", "evidence": {"max_seeds": 4, "spending": "haybittle"}}, "evidence.spending",
     "expected one of 'obrien_fleming', 'pocock'"),
    ({"data": {}}, "name", "required key is missing"),
    ({"name": "a/b"}, "name", "folder name"),
    (["name", "x"], "", "expected a mapping with keys name, data, model"),
]


@pytest.mark.parametrize("data,key,fragment", BAD, ids=[b[1] or "top" for b in BAD])
def test_bad_values_name_key_value_and_choices(data: object, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        study_from_dict(data)
    assert err.value.key == key
    assert fragment in err.value.message, err.value.message


def test_numeric_strings_are_floats() -> None:
    # PyYAML reads 1e-4 (no dot) as the string '1e-4'; a float key takes it as a number.
    cfg = study_from_dict(yaml.safe_load("name: x\nsolver: {weight_decay: 1e-4, base_lr: 2e-2}"))
    assert cfg.solver.weight_decay == 1e-4 and cfg.solver.base_lr == 0.02


def test_grid_accepts_counts_fractions_and_full() -> None:
    grid = GridConfig(train_images=(1000, "full"), data_fraction=(0.1,))
    assert grid.train_images == (1000, "full") and grid.data_fraction == (0.1,)
    assert LRConfig(low=0.005, high=0.05, samples=3).is_search


def test_load_study_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  norm: batchnorm\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: model.norm: 'batchnorm' is not valid")
    (tmp_path / "broken.yaml").write_text("name: [x\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_study(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="no such study file"):
        load_study(tmp_path / "missing.yaml")


def test_relative_data_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ndata:\n  source: coco\n"
                    "  train: {annotations: d/train.json, images: d/train}\n"
                    "  val: {annotations: d/val.json, images: d/val}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_study(path)
    assert cfg.data.train is not None and cfg.data.val is not None
    assert cfg.data.train.annotations == str(tmp_path.resolve() / "d" / "train.json")
    assert cfg.data.val.images == str(tmp_path.resolve() / "d" / "val")


def test_dump_and_reload_round_trip() -> None:
    cfg = study_from_dict({"name": "rt", "grid": {"schedule": [1.5, 2], "train_images": [100, "full"]},
                           "lr": {"low": 0.001, "high": 0.1, "samples": 2}})
    again = study_from_dict(yaml.safe_load(dump_study(cfg)))
    assert again == cfg
    assert isinstance(again, StudyConfig) and again.grid.schedule == (1.5, 2.0)


@pytest.mark.parametrize("space", sorted((REPO / "search_spaces").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_search_spaces_validate(space: Path) -> None:
    cfg = load_study(space)
    assert cfg.name == space.stem


def test_cli_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(REPO / "search_spaces" / "paper_r50_gn.yaml")]) == 0
    assert "unit_iters: 90000" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ngrid: {schedule: []}\n")
    assert main(["config", str(bad)]) == 2
    assert f"{bad}: grid.schedule: the grid is empty" in capsys.readouterr().err


def test_a_space_inherits_its_base_key_by_key(tmp_path: Path) -> None:
    """`base:` merges mappings key by key and replaces lists and scalars; the shipped catch_up and
    laptop spaces list only what differs from the default."""
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nsolver: {unit_iters: 40, drops_before_end: [10, 4], warmup_iters: 2, eval_period: 10}\n"
        "grid: {schedule: [1, 2], seeds: [0, 1]}\nanalysis: {margin: 2.0}\n")
    (tmp_path / "child.yaml").write_text(
        "base: parent.yaml\nname: child\nsolver: {eval_period: 5}\ngrid: {seeds: [7]}\n")
    child = load_study(tmp_path / "child.yaml")
    assert (child.name, child.solver.unit_iters, child.solver.eval_period) == ("child", 40, 5)
    assert (child.grid.schedule, child.grid.seeds, child.analysis.margin) == ((1, 2), (7,), 2.0)
    (tmp_path / "sub" / "grandchild.yaml").parent.mkdir()
    (tmp_path / "sub" / "grandchild.yaml").write_text("base: ../child.yaml\nname: grandchild\ngrid: {schedule: [2]}\n")
    grandchild = load_study(tmp_path / "sub" / "grandchild.yaml")  # relative to the file, not the cwd
    assert (grandchild.grid.schedule, grandchild.grid.seeds, grandchild.solver.eval_period) == ((2,), (7,), 5)
    default = (REPO / "search_spaces" / "default.yaml").read_text()
    for space in ("catch_up", "laptop"):
        text = (REPO / "search_spaces" / f"{space}.yaml").read_text()
        assert "base: default.yaml" in text and "model:" not in text and "pretrain:" not in text
        assert len(text.splitlines()) < len(default.splitlines()) / 1.5


@pytest.mark.parametrize("files,key,fragment", [
    ({"a.yaml": "base: b.yaml\nname: a\n"}, "base", "b.yaml: no such study file"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "name: b\n"}, "name", "required with base: b.yaml"),
    ({"a.yaml": "base: b.yaml\nname: a\n", "b.yaml": "base: a.yaml\nname: b\n"}, "base", "a circle of bases"),
    ({"a.yaml": "base: [b.yaml]\nname: a\n"}, "base", "expected the path of another study file"),
    ({"a.yaml": "base: b.yaml\nname: a\n", "b.yaml": "name: b\nsolver: {eval_perod: 3}\n"}, "solver.eval_perod",
     "unknown key"),
])
def test_a_bad_base_is_named(files: dict[str, str], key: str, fragment: str, tmp_path: Path) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_study(tmp_path / "a.yaml")
    assert f": {key}: " in str(err.value) and fragment in str(err.value), str(err.value)


def test_uris_stay_uris_when_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: s\ndata: {source: coco, train: {annotations: s3://b/train.json, "
                                    "images: s3://b/train}, val: {annotations: v.json, images: v}}\n")
    cfg = load_study(tmp_path / "s.yaml")
    assert (cfg.data.train.annotations, cfg.data.train.images) == ("s3://b/train.json", "s3://b/train")
    assert cfg.data.val.annotations == str(tmp_path / "v.json")
