"""COCO bbox and mask AP with COCOeval (faster-coco-eval's, or pycocotools'), on the paper's 0-100 scale."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from study.data.checks import evaluable_segmentation, valid_polygons

IouType = Literal["bbox", "segm"]
# The first six of COCOeval.stats, in its order.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


Backend = Literal["pycocotools", "faster_coco_eval"]
BACKENDS: tuple[Backend, ...] = ("pycocotools", "faster_coco_eval")


def default_backend() -> Backend:
    """faster-coco-eval (a dependency: same AP, ~7x faster, bench/suite.py part eval) when it
    imports, else pycocotools."""
    import importlib.util

    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def evaluation_ground_truth(coco_gt: COCO) -> COCO:
    """The ground truth as COCOeval needs it: annotation ids from 1, masks it can read.

    COCOeval records, per detection, the id of the ground truth it matched, and reads 0 as
    "unmatched": a detection matched to an annotation with id 0 counts as a false positive (three
    perfect detections of annotations 0, 1, 2 score AP 44.2 instead of 100). Some labelling tools
    export ids from 0, so a set with an id below 1 is evaluated on a copy whose annotations are
    numbered 1..N in their order (`original_ids` maps them back). pycocotools raises on a polygon of
    fewer than three points and on an empty polygon list (real COCO train2017 holds both): the copy
    leaves such polygons out, and an instance with none left keeps its box and gets an empty mask
    (`evaluable_segmentation`). The user's file is untouched. Built once per COCO object."""
    fixed = getattr(coco_gt, "_evaluation_gt", None)
    if fixed is None:
        fixed = _evaluable_copy(coco_gt)
        coco_gt._evaluation_gt = fixed  # type: ignore[attr-defined]
    return fixed


def _evaluable_copy(coco_gt: COCO) -> COCO:
    """`coco_gt` itself when COCOeval can take it as it is, else the copy (see above)."""
    anns = coco_gt.dataset["annotations"]
    ids = [a["id"] for a in anns]
    renumber = not all(isinstance(i, int) and i >= 1 for i in ids)
    unreadable = [i for i, a in enumerate(anns) if isinstance(a.get("segmentation"), list)
                  and (not a["segmentation"] or valid_polygons(a["segmentation"]) != a["segmentation"])]
    if not renumber and not unreadable:
        return coco_gt
    from study.data.coco import index_coco

    anns = list(anns)
    for i in unreadable:
        image = coco_gt.imgs[anns[i]["image_id"]]
        anns[i] = {**anns[i], "segmentation": evaluable_segmentation(
            anns[i]["segmentation"], image["height"], image["width"])}
    if renumber:
        anns = [{**a, "id": new} for new, a in enumerate(anns, start=1)]
    fixed = index_coco({**coco_gt.dataset, "annotations": anns})
    fixed.original_ids = dict(enumerate(ids, start=1)) if renumber else {i: i for i in ids}  # type: ignore[attr-defined]
    return fixed


def _faster_ground_truth(coco_gt: COCO) -> Any:
    """faster-coco-eval's index of the same ground truth, built once per COCO object."""
    gt = getattr(coco_gt, "_faster_coco_eval_gt", None)
    if gt is None:
        from faster_coco_eval import COCO as FasterCOCO

        gt = FasterCOCO(coco_gt.dataset, use_deepcopy=True)  # leaves pycocotools' dataset untouched
        coco_gt._faster_coco_eval_gt = gt  # type: ignore[attr-defined]
    return gt


def evaluate_coco(coco_gt: COCO, detections: list[dict[str, Any]], iou_type: IouType,
                  image_ids: list[int] | None = None, backend: Backend | None = None) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (0-100) of `detections` in COCO results format.

    `image_ids` restricts evaluation (e.g. to the images a shard predicted); by default every
    image of the ground truth counts. An area range without ground truth gives NaN (COCOeval's
    -1). No detections at all gives AP 0, where pycocotools' loadRes would raise. `backend`:
    pycocotools' COCOeval or faster-coco-eval's drop-in COCOeval_faster (default: see
    `default_backend`); both give the same numbers (tests/study/train/test_evaluation.py).
    """
    ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    if not detections:
        return {k: 0.0 for k in AP_KEYS}
    backend = backend or default_backend()
    coco_gt = evaluation_ground_truth(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            gt = _faster_ground_truth(coco_gt)
            ev = COCOeval_faster(gt, gt.loadRes(detections), iou_type)
        else:
            ev = COCOeval(coco_gt, coco_gt.loadRes(detections), iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float("nan") if v < 0 else float(v) * 100.0) for k, v in zip(AP_KEYS, ev.stats[:6])}


def ground_truth_as_detections(coco_gt: COCO) -> list[dict[str, Any]]:
    """Every non-crowd ground-truth instance as a detection with score 1 (RLE masks).

    Evaluating these against the same ground truth must give AP 100: a check that a dataset's
    annotations survive the round trip through COCOeval (`study data check --self-eval`). An
    instance without area (a zero box or an empty mask) matches nothing, itself included, so a set
    with some scores a little below 100.
    """
    coco_gt = evaluation_ground_truth(coco_gt)
    dets = []
    for ann in coco_gt.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        rle = coco_gt.annToRLE(ann)
        counts = rle["counts"]
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                     "bbox": [float(v) for v in ann["bbox"]], "score": 1.0,
                     "segmentation": {"size": [int(s) for s in rle["size"]],
                                      "counts": counts.decode() if isinstance(counts, bytes) else counts}})
    return dets


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Binary masks [N, H, W] as COCO RLEs with str counts (JSON-serialisable)."""
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode()
    return rles
