from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from study.cli import main
from study.data.coco import InstanceDataset, annotation_mask, load_coco
from study.data.synthetic import CLASSES, SynthSpec, write_synthetic
from study.train.evaluation import evaluate_coco, ground_truth_as_detections


def test_is_a_real_coco_file_with_ap_100(synthetic) -> None:
    for ann_path in (synthetic.train_annotations, synthetic.val_annotations):
        coco = COCO(str(ann_path))  # pycocotools reads the file itself
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        dets = ground_truth_as_detections(coco)
        assert len(dets) == len(coco.getAnnIds()) > 0
        for iou in ("bbox", "segm"):
            ap = evaluate_coco(coco, dets, iou)
            assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)


def test_instances_are_visible_parts_that_do_not_overlap(synthetic) -> None:
    split = load_coco(synthetic.train_annotations, synthetic.train_images)
    coco, occluded = split.coco, 0
    for image_id in split.image_ids:
        info = coco.imgs[image_id]
        anns = coco.imgToAnns[image_id]
        assert 1 <= len(anns) <= 4
        masks = [annotation_mask(a, info["height"], info["width"]).astype(bool) for a in anns]
        for a, m in zip(anns, masks):
            assert all(len(p) >= 6 for p in a["segmentation"])
            assert abs(m.sum() - a["area"]) <= 1 and m.sum() >= 6
            occluded += len(a["segmentation"]) > 1
        for i in range(len(masks)):  # visible parts are disjoint (a shared edge pixel at most)
            for j in range(i + 1, len(masks)):
                overlap = (masks[i] & masks[j]).sum()
                assert overlap <= 0.1 * min(masks[i].sum(), masks[j].sum()), (image_id, i, j, overlap)
    sizes = {(coco.imgs[i]["width"], coco.imgs[i]["height"]) for i in split.image_ids}
    assert max(max(s) for s in sizes) == 64 and min(min(s) for s in sizes) >= 48 and len(sizes) > 3


def test_objects_stand_out_from_the_background(synthetic) -> None:
    """Each instance's pixels differ in colour from the pixels just around its box."""
    split = load_coco(synthetic.val_annotations, synthetic.val_images)
    ds = InstanceDataset(split)
    for i in range(len(ds)):
        image, t = ds[i]
        for mask in t["masks"].bool():
            inside = image[:, mask].mean(1)
            ring = image[:, ~mask].mean(1)
            assert (inside - ring).abs().sum() > 0.05


def test_deterministic_and_a_larger_set_extends_a_smaller(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", SynthSpec(train_images=6, val_images=2, image_size=48, seed=5))
    b = write_synthetic(tmp_path / "b", SynthSpec(train_images=6, val_images=2, image_size=48, seed=5))
    c = write_synthetic(tmp_path / "c", SynthSpec(train_images=9, val_images=2, image_size=48, seed=5))
    d = write_synthetic(tmp_path / "d", SynthSpec(train_images=6, val_images=2, image_size=48, seed=6))
    ja, jb, jc, jd = (json.loads(p.train_annotations.read_text()) for p in (a, b, c, d))
    assert ja["annotations"] == jb["annotations"] and ja["images"] == jb["images"]
    for name in ("000001.png", "000006.png"):
        assert (a.train_images / name).read_bytes() == (b.train_images / name).read_bytes()
        assert (a.train_images / name).read_bytes() == (c.train_images / name).read_bytes()
    assert jc["images"][:6] == ja["images"]
    assert [x for x in jc["annotations"] if x["image_id"] <= 6] == ja["annotations"]
    assert jd["annotations"] != ja["annotations"]


def test_cli_writes_then_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    args = ["data", "synth", "--out", str(out), "--train-images", "5", "--val-images", "3",
            "--image-size", "40"]
    assert main(args) == 0
    assert f"check it with: study data check {out / 'train.json'} --images {out / 'train'}" \
        in capsys.readouterr().out
    stamp = (out / "train.json").stat().st_mtime_ns
    assert main(args) == 0 and (out / "train.json").stat().st_mtime_ns == stamp  # cached
    assert main(args[:-2] + ["--image-size", "48", "--train-images", "3"]) == 0  # a new spec regenerates
    assert sorted(p.name for p in (out / "train").iterdir()) == ["000001.png", "000002.png", "000003.png"]
    assert main(["data", "check", str(out / "train.json"), "--images", str(out / "train")]) == 0
    assert main(["data", "synth", "--out", str(out), "--image-size", "8"]) == 2
    assert "image_size: 8 must be >= 32 pixels" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--min-radius", "0.3", "--max-radius", "0.2"]) == 2
    assert "need 0.05 <= min_radius <= max_radius <= 0.5" in capsys.readouterr().err


def test_object_sizes_follow_the_radius_range(tmp_path: Path) -> None:
    """Unoccluded objects' boxes scale with [min_radius, max_radius]."""
    def box_sides(spec: SynthSpec) -> list[float]:
        coco = json.loads(write_synthetic(tmp_path / str(hash(spec)), spec).train_annotations.read_text())
        short = {im["id"]: min(im["width"], im["height"]) for im in coco["images"]}
        return [max(a["bbox"][2:]) / short[a["image_id"]] for a in coco["annotations"]
                if len(a["segmentation"]) == 1]

    small = box_sides(SynthSpec(train_images=40, val_images=1, min_objects=1, max_objects=1))
    big = box_sides(SynthSpec(train_images=40, val_images=1, min_objects=1, max_objects=1,
                              min_radius=0.3, max_radius=0.4))
    assert max(small) <= 2 * 0.36 + 0.05 and min(big) >= 0.3  # a side spans at most 2r, at least ~r
    assert sum(big) / len(big) > 1.3 * sum(small) / len(small)
    with pytest.raises(Exception, match="max_radius"):
        SynthSpec(min_radius=0.4, max_radius=0.3)


def test_object_labels_are_one_category_of_the_same_instances(tmp_path: Path) -> None:
    """labels: object keeps every image and instance and gives them all category 1, "object"."""
    shape = json.loads(write_synthetic(tmp_path / "shape", SynthSpec(train_images=12, val_images=1))
                       .train_annotations.read_text())
    obj = json.loads(write_synthetic(tmp_path / "object", SynthSpec(train_images=12, val_images=1,
                                                                    labels="object"))
                     .train_annotations.read_text())
    assert [c["name"] for c in obj["categories"]] == ["object"]
    assert {a["category_id"] for a in obj["annotations"]} == {1}
    assert len({a["category_id"] for a in shape["annotations"]}) > 1
    strip = [{k: v for k, v in a.items() if k != "category_id"} for a in shape["annotations"]]
    assert strip == [{k: v for k, v in a.items() if k != "category_id"} for a in obj["annotations"]]
    assert (tmp_path / "shape" / "train" / "000007.png").read_bytes() == \
        (tmp_path / "object" / "train" / "000007.png").read_bytes()
    with pytest.raises(Exception, match="labels"):
        SynthSpec(labels="colour")
    assert main(["data", "synth", "--out", str(tmp_path / "cli"), "--train-images", "2", "--val-images", "1",
                 "--labels", "object"]) == 0
    assert [c["name"] for c in json.loads((tmp_path / "cli" / "val.json").read_text())["categories"]] == ["object"]


def test_a_subset_of_classes_draws_only_those_shapes_and_is_not_rebuilt(tmp_path: Path) -> None:
    """classes: the categories are the subset, every instance is one of its shapes (a lone triangle
    clipped by the frame has at most 6 vertices, a lone circle about 40), and reading the spec back
    from the marker (a list, not a tuple) reuses the set."""
    def vertices(classes: tuple[str, ...]) -> tuple[list[str], list[int]]:
        spec = SynthSpec(train_images=20, val_images=1, max_objects=1, classes=classes)
        coco = json.loads(write_synthetic(tmp_path / "_".join(classes), spec).train_annotations.read_text())
        return [c["name"] for c in coco["categories"]], [len(a["segmentation"][0]) // 2 for a in coco["annotations"]]

    names, triangles = vertices(("triangle",))
    assert names == ["triangle"] and len(triangles) == 20 and max(triangles) <= 6
    names, circles = vertices(("circle",))
    assert names == ["circle"] and min(circles) >= 20
    names, _ = vertices(("circle", "triangle", "star"))
    assert names == ["circle", "triangle", "star"]
    marker = tmp_path / "circle_triangle_star" / "synth_spec.json"
    built = marker.stat().st_mtime_ns
    write_synthetic(tmp_path / "circle_triangle_star",
                    SynthSpec(train_images=20, val_images=1, max_objects=1, classes=("circle", "triangle", "star")))
    assert marker.stat().st_mtime_ns == built
    for bad in ((), ("pentagon",), ("triangle", "circle")):
        with pytest.raises(Exception, match="classes"):
            SynthSpec(classes=bad)
    assert main(["data", "synth", "--out", str(tmp_path / "cli"), "--train-images", "2", "--val-images", "1",
                 "--classes", "circle,star"]) == 0
    assert [c["name"] for c in json.loads((tmp_path / "cli" / "val.json").read_text())["categories"]] == \
        ["circle", "star"]
