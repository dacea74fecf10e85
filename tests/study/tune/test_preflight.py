"""Bad study files and bad datasets stop `study run` before Ray starts, with an error that names
the file, the key and what is allowed (exit 2; exit 1 for a broken dataset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from study.cli import main
from study.data.synthetic import SynthSpec, write_synthetic

SMOKE_BODY = """
model: {backbone: resnet18, norm: gn, profile: tiny, min_size: 64, max_size: 64}
solver: {base_lr: 0.01, ims_per_batch: 2, unit_iters: 6, drops_before_end: [3, 1], warmup_iters: 1, eval_period: 3}
lr: {values: [0.01]}
"""
SYNTH = "data: {source: synthetic, synthetic: {train_images: 24, val_images: 8, image_size: 64}}\n"
GRID = "grid: {init: [scratch], schedule: [1], train_images: [16]}\n"

# (what is wrong, the study file, the key the error names, a fragment of its message)
BAD_FILES = [
    ("unknown key", "name: b\nmodle: {}\n", "modle", "unknown key; allowed keys here: name, data, model"),
    ("wrong type", "name: b\nsolver: {base_lr: fast}\n", "solver.base_lr", "'fast' is not valid: expected a number"),
    ("empty grid", "name: b\ngrid: {schedule: []}\n", "grid.schedule", "the grid is empty"),
    ("unknown backbone", "name: b\nmodel: {backbone: resnet51}\n", "model.backbone",
     "'resnet51' is not valid: expected one of 'resnet18', 'resnet34', 'resnet50'"),
    ("unknown norm", "name: b\nmodel: {norm: batchnorm}\n", "model.norm",
     "expected one of 'gn', 'syncbn', 'bn', 'frozen_bn'"),
    ("syncbn on CPU", "name: b\nmodel: {norm: syncbn}\n", "model.norm", "'syncbn' needs GPUs"),
    ("schedule shorter than its drops",
     "name: b\nsolver: {unit_iters: 10, drops_before_end: [15, 6], warmup_iters: 2}\ngrid: {schedule: [1, 2]}\n",
     "grid.schedule", "1x ends at iteration 10, so its first LR drop (15 before the end) falls at -5"),
    ("size larger than the dataset", "name: b\n" + SYNTH + SMOKE_BODY + "grid: {train_images: [16, 100]}\n",
     "grid.train_images", "train_images 100 is larger than"),
    ("missing annotation file",
     "name: b\ndata: {source: coco, train: {annotations: nowhere/train.json, images: nowhere},"
     " val: {annotations: nowhere/val.json, images: nowhere}}\n" + SMOKE_BODY + GRID,
     "data.train.annotations", "nowhere/train.json: no such file (expected a COCO instances JSON file"),
    ("BN weights into a GN detector",  # checked by the architecture's layout: no download
     "name: b\n" + SYNTH + SMOKE_BODY.replace("resnet18", "resnet50").replace(
         "max_size: 64}", "max_size: 64, pretrained_weights: ResNet50_Weights.IMAGENET1K_V1}") + GRID.replace("scratch", "pretrained"),
     "model.pretrained_weights", "the checkpoint has BatchNorm statistics, the detector uses GroupNorm: its 106 "
     "norm tensors would keep their fresh init"),
    ("weights of another depth",
     "name: b\n" + SYNTH + SMOKE_BODY.replace("max_size: 64}", "max_size: 64, pretrained_weights: "
                                               "ResNet50_Weights.IMAGENET1K_V1}") + GRID.replace("scratch", "pretrained"),
     "model.pretrained_weights", "does not fit this backbone"),
    ("a pre-training norm the detector cannot load", "name: b\npretrain: {norm: bn}\n", "pretrain.norm",
     "'bn' pre-trains norms the 'gn' detector cannot load"),
]


@pytest.mark.parametrize("what,text,key,fragment", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_study_file_is_refused_before_ray_starts(what: str, text: str, key: str, fragment: str,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.chdir(tmp_path)  # relative data paths resolve here
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    assert main(["run", str(space), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"study: config error: {space}: {key}: "), err
    assert fragment in err, err
    assert not ray.is_initialized()


@pytest.fixture
def coco_copy(tmp_path: Path) -> Path:
    """A small COCO-format set on disk (generated), with a study file that reads it."""
    paths = write_synthetic(tmp_path / "set", SynthSpec(train_images=12, val_images=4, image_size=64, seed=1))
    (tmp_path / "s.yaml").write_text(
        f"name: s\ndata: {{source: coco, train: {{annotations: {paths.train_annotations}, "
        f"images: {paths.train_images}}}, val: {{annotations: {paths.val_annotations}, images: {paths.val_images}}}}}\n"
        + SMOKE_BODY + "grid: {init: [scratch], schedule: [1], train_images: [8, full]}\n")
    return tmp_path


def _run(folder: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    import ray

    code = main(["run", str(folder / "s.yaml"), "--storage", str(folder / "runs")])
    assert not ray.is_initialized()
    return code, capsys.readouterr().err


def test_a_truncated_image_is_named_before_ray_starts(coco_copy: Path, capsys: pytest.CaptureFixture) -> None:
    image = sorted((coco_copy / "set" / "train").glob("*.png"))[3]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    code, err = _run(coco_copy, capsys)
    assert code == 1 and "1 image(s) cannot be decoded" in err and str(image) in err, err


def test_an_annotation_file_that_is_not_json_is_named(coco_copy: Path, capsys: pytest.CaptureFixture) -> None:
    ann = coco_copy / "set" / "val.json"
    ann.write_text('{"images": [')
    code, err = _run(coco_copy, capsys)
    assert code == 1 and str(ann) in err and "not valid JSON" in err, err


def test_an_empty_training_set_after_filtering_is_named(coco_copy: Path, capsys: pytest.CaptureFixture) -> None:
    ann = coco_copy / "set" / "train.json"
    data = json.loads(ann.read_text())
    ann.write_text(json.dumps({**data, "annotations": []}))  # every image is dropped by filter_empty
    code, err = _run(coco_copy, capsys)
    assert code == 2 and f"{coco_copy / 's.yaml'}: grid.train_images: " in err, err
    assert "0 usable images after dropping images without instances (data.filter_empty)" in err, err


def test_a_good_coco_set_passes_and_its_images_are_decoded(coco_copy: Path) -> None:
    from study.config import load_study
    from study.tune.preflight import check_study_data

    said: list[str] = []
    check_study_data(load_study(coco_copy / "s.yaml"), coco_copy / "data", progress=said.append)
    assert said == ["data: 12 training and 4 val images decoded"]
    shutil.rmtree(coco_copy / "set" / "val")  # the val images folder is gone
    from study.errors import ConfigError

    with pytest.raises(ConfigError, match="data.val.images: .*set/val: no such folder"):
        check_study_data(load_study(coco_copy / "s.yaml"), coco_copy / "data")


def test_allowed_fresh_norms_pass_and_are_counted(tmp_path: Path) -> None:
    from study.config import study_from_dict
    from study.tune.preflight import check_study_weights

    said: list[str] = []
    cfg = study_from_dict({"name": "b", "grid": {"init": ["pretrained"]},
                           "model": {"backbone": "resnet50", "norm": "gn", "allow_fresh_norms": True}})
    check_study_weights(cfg, "ResNet50_Weights.IMAGENET1K_V1", progress=said.append)
    assert said == ["pretrained weights: 53 backbone tensors (the convs) will load from ResNet50_Weights.IMAGENET1K_V1; "
                    "106 norm tensors keep their fresh init (model.allow_fresh_norms)"]
