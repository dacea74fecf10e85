from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.data.coco import load_coco
from study.train.evaluation import AP_KEYS, BACKENDS, evaluate_coco, evaluation_ground_truth, ground_truth_as_detections


def test_ground_truth_against_itself_is_ap_100_on_the_real_set(fruits: Path) -> None:
    split = load_coco(fruits / "annotations.json", fruits / "images")
    dets = ground_truth_as_detections(split.coco)
    assert len(dets) == 165
    for iou in ("bbox", "segm"):
        ap = evaluate_coco(split.coco, dets, iou)
        assert list(ap) == list(AP_KEYS)
        for key in ("AP", "AP50", "AP75", "APl"):
            assert ap[key] == pytest.approx(100.0), (iou, key, ap)
        assert math.isnan(ap["APs"])  # 800x600 photos: no small instance at all


def test_imperfect_detections_score_lower(fruits: Path) -> None:
    split = load_coco(fruits / "annotations.json", fruits / "images")
    dets = ground_truth_as_detections(split.coco)
    half = dets[::2]  # recall 0.5 at every threshold
    assert evaluate_coco(split.coco, half, "bbox")["AP"] == pytest.approx(50.0, abs=5.0)
    shifted = [dict(d, bbox=[d["bbox"][0] + d["bbox"][2] * 0.3, *d["bbox"][1:]]) for d in dets]
    ap = evaluate_coco(split.coco, shifted, "bbox")
    assert ap["AP50"] == pytest.approx(100.0) and ap["AP75"] < 1.0  # IoU 0.54 for a 30% shift
    only_first = evaluate_coco(split.coco, [d for d in dets if d["image_id"] == 0], "bbox", image_ids=[0])
    assert only_first["AP"] == pytest.approx(100.0)
    assert evaluate_coco(split.coco, [], "segm") == {k: 0.0 for k in AP_KEYS}


def test_faster_coco_eval_gives_pycocotools_numbers(fruits: Path) -> None:
    """The default backend is faster-coco-eval; on imperfect detections of the real set every AP of
    both IoU types equals pycocotools' to 1e-4, and pycocotools' ground truth is left untouched."""
    import json
    import random

    from study.train.evaluation import default_backend

    assert default_backend() == "faster_coco_eval"
    split = load_coco(fruits / "annotations.json", fruits / "images")
    before = json.dumps(split.coco.dataset, sort_keys=True)
    rng = random.Random(0)
    dets = [dict(d, score=rng.uniform(0.1, 1.0),
                 bbox=[d["bbox"][0] + rng.uniform(-0.2, 0.2) * d["bbox"][2], d["bbox"][1], *d["bbox"][2:]])
            for d in ground_truth_as_detections(split.coco) if rng.random() < 0.8]
    fast = {iou: evaluate_coco(split.coco, dets, iou, backend="faster_coco_eval") for iou in ("bbox", "segm")}
    assert json.dumps(split.coco.dataset, sort_keys=True) == before  # (pycocotools' segm eval rewrites it)
    for iou in ("bbox", "segm"):
        ref = evaluate_coco(split.coco, dets, iou, backend="pycocotools")
        assert 20 < ref["AP"] < 95, ref  # neither trivial nor perfect
        for key in AP_KEYS:
            assert fast[iou][key] == pytest.approx(ref[key], abs=1e-4, nan_ok=True), (iou, key)


def _ids_from(start: int) -> dict:
    """Three images, one square each, annotation ids start, start + 1, start + 2."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(3)]
    annotations = [{"id": start + i, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                    "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]} for i in range(3)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_annotation_ids_from_0_are_evaluated_correctly(backend: str) -> None:
    """COCOeval reads a matched ground-truth id 0 as 'unmatched': without renumbering, the perfect
    detection of annotation 0 is a false positive and AP is 44.2."""
    from study.data.coco import index_coco

    coco = index_coco(_ids_from(0))
    dets = ground_truth_as_detections(coco)  # exactly the ground truth, annotation 0 included
    for iou in ("bbox", "segm"):
        assert evaluate_coco(coco, dets, iou, backend=backend)["AP"] == pytest.approx(100.0), iou
    assert [a["id"] for a in coco.dataset["annotations"]] == [0, 1, 2]  # the set itself is untouched
    assert evaluation_ground_truth(coco).original_ids == {1: 0, 2: 1, 3: 2}
    ones = index_coco(_ids_from(1))
    assert evaluation_ground_truth(ones) is ones  # ids from 1: evaluated as they are


def test_study_data_check_warns_that_ids_from_0_are_handled(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from study.cli import main

    path = tmp_path / "zero.json"
    path.write_text(json.dumps(_ids_from(0)))
    assert main(["data", "check", str(path)]) == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert ("WARNING annotation 0: 1 annotation id(s) below 1 (ids start at 0): COCOeval reads a matched id 0 "
            "as 'unmatched', which would skew AP; handled: the evaluation renumbers the annotations from 1") in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_real_set_renumbered_from_0_scores_as_it_does_from_1(fruits: Path, backend: str) -> None:
    """fruits_nuts numbers its 165 annotations 1..165; the same set numbered 0..164 (as some tools
    export it), with the same imperfect detections, gives every AP to the last digit."""
    import json
    import random

    from study.data.coco import index_coco

    data = json.loads((fruits / "annotations.json").read_text())
    from_0 = index_coco({**data, "annotations": [{**a, "id": a["id"] - 1} for a in data["annotations"]]})
    from_1 = index_coco(data)
    rng = random.Random(1)
    dets = [dict(d, score=rng.uniform(0.1, 1.0),
                 bbox=[d["bbox"][0] + rng.uniform(-0.2, 0.2) * d["bbox"][2], d["bbox"][1], *d["bbox"][2:]])
            for d in ground_truth_as_detections(from_1) if rng.random() < 0.8]
    for iou in ("bbox", "segm"):
        a, b = evaluate_coco(from_0, dets, iou, backend=backend), evaluate_coco(from_1, dets, iou, backend=backend)
        assert 20 < a["AP"] < 95 and json.dumps(a) == json.dumps(b), (iou, a, b)  # NaN-safe: APs is NaN in both
