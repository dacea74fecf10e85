from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from study.cli import main
from study.data.checks import check_file, check_instances
from study.errors import DataError
from study.data.coco import load_coco


def _broken_fruits(fruits: Path, out: Path) -> tuple[Path, Path]:
    """A copy of fruits_nuts with one of each problem `study data check` must name, and more."""
    images = out / "images"
    shutil.copytree(fruits / "images", images)
    data = json.loads((fruits / "annotations.json").read_text())
    anns = data["annotations"]
    (images / data["images"][3]["file_name"]).unlink()                 # missing image
    anns[0]["category_id"] = 99                                        # unknown category
    anns[1]["bbox"][2] = 0                                             # zero-width box (a warning)
    anns[2]["segmentation"] = [[10, 10, 20, 20]]                       # 2-point polygon (a warning)
    anns[6]["segmentation"] = [[10, 10, 20, 20, 30]]                   # odd coordinates
    anns[3]["image_id"] = 12345                                        # unknown image
    anns[5]["id"] = anns[4]["id"]                                      # duplicate annotation id
    data["categories"].append({"id": 1, "name": "date again"})         # category declared twice
    data["categories"].append({"id": 7, "name": "walnut"})             # never used (a warning)
    (images / data["images"][5]["file_name"]).write_bytes(
        (images / data["images"][5]["file_name"]).read_bytes()[:5000])  # truncated JPEG
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps(data))
    return ann_path, images


def test_clean_sets_pass(fruits: Path, synthetic) -> None:
    report, _ = check_file(fruits / "annotations.json", fruits / "images", images="decode")
    assert report.ok and not report.problems
    assert (report.images, report.instances, len(report.categories)) == (18, 165, 3)
    assert report.instances_per_category == {1: 71, 2: 41, 3: 53}
    report, _ = check_file(synthetic.train_annotations, synthetic.train_images, images="decode")
    assert report.ok and report.images == 24 and report.images_without_instances == 0


def test_each_problem_is_named_with_its_record(fruits: Path, tmp_path: Path) -> None:
    ann_path, images = _broken_fruits(fruits, tmp_path)
    data = json.loads(ann_path.read_text())
    report, _ = check_file(ann_path, images, images="decode")
    errors = [str(p) for p in report.errors]
    ids = [a["id"] for a in data["annotations"]]
    expected = [
        f"image 3 ({data['images'][3]['file_name']}): image file not found",
        f"annotation {ids[0]}: category_id 99 is not a declared category",
        f"annotation {ids[6]}: polygon 0 has an odd number of coordinates (5)",
        f"annotation {ids[3]}: image_id 12345 is not a declared image",
        f"annotation {ids[4]}: annotation id used twice",
        "category 1: category id declared twice ('date' and 'date again')",
        f"image 5 ({data['images'][5]['file_name']}): image file cannot be read",
    ]
    for fragment in expected:
        assert any(fragment in e for e in errors), (fragment, errors)
    assert len(errors) == len(expected), errors
    assert [str(p) for p in report.warnings] == [
        "WARNING annotations: 2 instance(s) cannot be training targets and are left out of training "
        f"(evaluation keeps them): empty segmentation (1): annotation {ids[2]}; zero width (1): "
        f"annotation {ids[1]}",
        "WARNING category 7 (walnut): declared but never used by an instance"]
    # a header-only check does not see the truncation
    quick, _ = check_file(ann_path, images, images="header")
    assert len(quick.errors) == len(expected) - 1


def test_real_cocos_degenerate_boxes_are_one_warning(degenerate_fruits: tuple[Path, list[int]], fruits: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Zero-height and zero-area boxes (COCO train2017 has them): exit 0, one warning naming each
    id; the loader accepts the file and training leaves exactly those instances out."""
    from study.data.coco import InstanceDataset

    ann_path, ids = degenerate_fruits
    assert main(["data", "check", str(ann_path), "--images", str(fruits / "images"), "--self-eval"]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 1 warnings" in out
    warning = [line for line in out.splitlines() if "WARNING" in line]
    assert warning == [f"  WARNING annotations: 3 instance(s) cannot be training targets and are left out of "
                       f"training (evaluation keeps them): zero area (1): annotation {ids[2]}; zero height (2): "
                       f"annotation {ids[0]}, {ids[1]}"]
    assert "self-eval bbox: AP" in out
    split = load_coco(ann_path, fruits / "images", filter_empty=True)
    data = InstanceDataset(split)
    assert sum(data.instances(i) for i in range(len(data))) == 165 - 3
    assert sum(len(data[i][1]["boxes"]) for i in range(len(data))) == 165 - 3


def test_empty_segmentations_are_left_out_of_training_and_evaluated_as_empty_masks(fruits: Path) -> None:
    """An instance whose polygons all have fewer than 3 points: a warning, no training target, and in
    evaluation an empty mask (pycocotools raises on such polygons)."""
    from pycocotools import mask as mask_utils

    from study.data.coco import index_coco
    from study.train.evaluation import evaluate_coco, evaluation_ground_truth, ground_truth_as_detections

    data = json.loads((fruits / "annotations.json").read_text())
    data["annotations"][4]["segmentation"] = [[10, 10, 20, 20]]
    data["annotations"][9]["segmentation"] = []
    data["annotations"][11]["segmentation"].append([5, 5])  # one short polygon beside a real one
    report = check_instances(data)
    assert report.ok and len(report.warnings) == 1
    assert "empty segmentation (2)" in str(report.warnings[0])
    gt = evaluation_ground_truth(index_coco(data))
    fixed = {a["id"]: a["segmentation"] for a in gt.dataset["annotations"]}
    empty = fixed[data["annotations"][9]["id"]]
    assert mask_utils.area(mask_utils.frPyObjects(empty, empty["size"][0], empty["size"][1])) == 0
    assert fixed[data["annotations"][11]["id"]] == data["annotations"][11]["segmentation"][:-1]
    ap = evaluate_coco(index_coco(data), ground_truth_as_detections(index_coco(data)), "segm")
    assert 97.0 < ap["AP"] < 100.0  # two of 165 instances have no mask to match


def test_cli_check_exit_codes_and_output(fruits: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(fruits / "annotations.json"), "--images", str(fruits / "images"),
                 "--self-eval"]) == 0
    out = capsys.readouterr().out
    assert "18 images, 165 instances" in out and "no problems found" in out
    assert "self-eval bbox: AP 100.0" in out and "self-eval segm: AP 100.0" in out
    ann_path, images = _broken_fruits(fruits, tmp_path)
    assert main(["data", "check", str(ann_path), "--images", str(images)]) == 1
    out = capsys.readouterr().out
    assert "7 errors, 2 warnings" in out
    for fragment in ("image file not found", "category_id 99", "zero width (1)",
                     "empty segmentation (1)", "odd number", "declared twice", "cannot be read"):
        assert fragment in out


def test_the_console_script_runs(fruits: Path, tmp_path: Path) -> None:
    """The installed `study` entry point, as a user types it (exit code included)."""
    study = Path(sys.executable).with_name("study")
    ok = subprocess.run([str(study), "data", "check", str(fruits / "annotations.json"),
                         "--images", str(fruits / "images")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    ann_path, images = _broken_fruits(fruits, tmp_path)
    bad = subprocess.run([str(study), "data", "check", str(ann_path), "--images", str(images)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "category_id 99" in bad.stdout


@pytest.mark.parametrize("data,fragment", [
    ([], "the top level is not a JSON object"),
    ({"images": []}, "'annotations' is missing or not a list"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 10}], "annotations": [],
      "categories": []}, "width/height must be positive integers"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                       "segmentation": {"size": [20, 10], "counts": "abc"}}],
      "categories": [{"id": 1, "name": "c"}]}, "RLE size [20, 10] differs"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
      "categories": [{"id": 1, "name": "c"}]}, "segmentation is missing"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10},
                 {"id": 1, "file_name": "b.png", "width": 10, "height": 10}],
      "annotations": [], "categories": []}, "image 1: image id declared twice"),
])
def test_structural_problems(data: object, fragment: str) -> None:
    report = check_instances(data)
    assert not report.ok
    assert any(fragment in str(p) for p in report.errors), [str(p) for p in report.errors]


def test_loader_refuses_bad_data_with_the_same_messages(fruits: Path, tmp_path: Path) -> None:
    ann_path, images = _broken_fruits(fruits, tmp_path)
    with pytest.raises(DataError) as err:
        load_coco(ann_path, images)
    text = str(err.value)
    assert "cannot be used for training" in text and "category_id 99 is not a declared category" in text
    assert "odd number of coordinates" in text and "image file not found" in text
    (tmp_path / "notjson.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(tmp_path / "notjson.json", images)
    with pytest.raises(DataError, match="annotations file not found"):
        load_coco(tmp_path / "missing.json", images)
