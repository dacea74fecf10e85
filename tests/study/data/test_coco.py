from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from study.data.coco import InstanceDataset, collate, load_coco, resized_shape
from study.data.sampling import IterationBatchSampler, nested_subset
from study.train.evaluation import evaluate_coco, masks_to_rle


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def _check_sample(image: torch.Tensor, target: dict, num_classes: int) -> None:
    n = len(target["labels"])
    h, w = image.shape[1:]
    assert image.dtype == torch.float32 and image.shape[0] == 3
    assert 0.0 <= image.min().item() and image.max().item() <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and n > 0
    assert 1 <= target["labels"].min().item() and target["labels"].max().item() <= num_classes
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, h, w)
    assert set(torch.unique(target["masks"]).tolist()) <= {0, 1}
    boxes = target["boxes"]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 2] <= w).all()
    for mask, box in zip(target["masks"], boxes):  # the mask fills its box (pycocotools rasterises within ~1 px)
        assert np.allclose(_mask_box(mask), box.tolist(), atol=1.5), (_mask_box(mask), box.tolist())


def test_synthetic_samples(synthetic) -> None:
    split = load_coco(synthetic.train_annotations, synthetic.train_images, filter_empty=True)
    assert split.category_names == ("circle", "triangle", "square", "star", "hexagon")
    ds = InstanceDataset(split)
    assert len(ds) == 24
    for i in range(len(ds)):
        image, target = ds[i]
        _check_sample(image, target, split.num_classes)
        assert target["image_id"] == split.image_ids[i] and target["scale"] == 1.0
        assert len(target["labels"]) == ds.instances(i)


def test_fruits_samples_resized_and_flipped(fruits: Path) -> None:
    split = load_coco(fruits / "annotations.json", fruits / "images")
    assert split.category_ids == (1, 2, 3) and split.category_names == ("date", "fig", "hazelnut")
    ds = InstanceDataset(split, min_size=120, max_size=200)
    image, target = ds[0]
    assert image.shape == (3, 120, 160) and target["scale"] == pytest.approx(0.2)
    _check_sample(image, target, 3)
    flipped, ftarget = ds[(0, True)]
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(ftarget["masks"], target["masks"].flip(-1))
    b, fb = target["boxes"], ftarget["boxes"]
    assert torch.allclose(fb[:, 0], 160 - b[:, 2]) and torch.allclose(fb[:, 2], 160 - b[:, 0])
    assert torch.equal(fb[:, 1::2], b[:, 1::2]) and ftarget["flipped"]
    raw_image, raw = InstanceDataset(split)[0]
    assert raw_image.shape == (3, 600, 800)
    assert torch.allclose(target["boxes"], raw["boxes"] * 0.2)


def test_resized_shape() -> None:
    assert resized_shape(600, 800, 800, 1333) == (800, 1067, pytest.approx(4 / 3))
    assert resized_shape(480, 1920, 800, 1333) == (333, 1333, pytest.approx(1333 / 1920))
    assert resized_shape(64, 48, 64, 64) == (64, 48, 1.0)


def test_dataset_masks_and_boxes_evaluate_to_ap_100(fruits: Path) -> None:
    """Targets turned back into COCO detections match the ground truth exactly."""
    split = load_coco(fruits / "annotations.json", fruits / "images")
    ds = InstanceDataset(split)
    dets = []
    for i in range(len(ds)):
        _, t = ds[i]
        for box, label, rle in zip(t["boxes"], t["labels"], masks_to_rle(t["masks"].numpy())):
            x0, y0, x1, y1 = box.tolist()
            dets.append({"image_id": t["image_id"], "category_id": split.category_ids[label - 1],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0, "segmentation": rle})
    assert len(dets) == 165
    for iou in ("bbox", "segm"):
        assert evaluate_coco(split.coco, dets, iou)["AP"] == pytest.approx(100.0)


def test_labels_are_contiguous_crowd_is_left_out_and_empty_images(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (20, 30, 90)).save(tmp_path / "b.png")
    square = [[5, 5, 15, 5, 15, 15, 5, 15]]
    data = {"images": [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 11, "file_name": "b.png", "width": 40, "height": 30}],
            "annotations": [
                {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 5, 10, 10], "segmentation": square,
                 "iscrowd": 0, "area": 100},
                {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 5, 10, 10], "iscrowd": 0,
                 "area": 100,  # uncompressed RLE, column-major: x 20..29, y 5..14
                 "segmentation": {"size": [30, 40], "counts": [605, 10] + [20, 10] * 9 + [315]}},
                {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1,
                 "area": 1200, "segmentation": {"size": [30, 40], "counts": [0, 1200]}}],
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    split = load_coco(tmp_path / "ann.json", tmp_path)
    assert split.category_ids == (3, 7) and split.image_ids == (10, 11)  # label k <-> category_ids[k-1]
    assert load_coco(tmp_path / "ann.json", tmp_path, filter_empty=True).image_ids == (10,)
    ds = InstanceDataset(split)
    _, t = ds[0]
    assert t["labels"].tolist() == [2, 1]
    assert t["boxes"].tolist() == [[5, 5, 15, 15], [20, 5, 30, 15]]
    assert t["masks"][1].sum().item() == 100 and _mask_box(t["masks"][1]) == [20, 5, 30, 15]
    image, t = ds[1]  # only a crowd region: no training instance, shapes still right
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 30, 40)
    assert ds.instances(1) == 0
    _, t = InstanceDataset(split, min_size=60, max_size=80)[(1, True)]
    assert t["masks"].shape == (0, 60, 80)


def test_nested_subsets_of_the_real_set_through_a_loader(fruits: Path) -> None:
    split = load_coco(fruits / "annotations.json", fruits / "images", filter_empty=True)
    small, large = nested_subset(split.image_ids, 5, seed=0), nested_subset(split.image_ids, 12, seed=0)
    assert set(small) < set(large) < set(split.image_ids)
    ds = InstanceDataset(split, large, min_size=96, max_size=128)
    sampler = IterationBatchSampler(len(ds), 4, seed=0, start_iter=0, max_iter=3, rank=1, world_size=2)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
    assert len(batches) == 3
    for images, targets in batches:
        assert len(images) == len(targets) == 2
        for image, target in zip(images, targets):
            assert image.shape == (3, 96, 128) and target["image_id"] in large
            _check_sample(image, target, 3)
