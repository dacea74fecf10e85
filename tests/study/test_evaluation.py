from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.data.coco import load_coco
from study.evaluation import AP_KEYS, evaluate_coco, ground_truth_as_detections


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
