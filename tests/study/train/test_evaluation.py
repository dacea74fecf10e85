from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.data.coco import load_coco
from study.train.evaluation import AP_KEYS, evaluate_coco, ground_truth_as_detections


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
