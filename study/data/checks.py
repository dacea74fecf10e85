"""Validation of a COCO instances file and its images.

`study data check` prints the report; the dataset loader runs the same checks and refuses a file
with errors, so a bad record is reported with its id instead of surfacing as a traceback from
deep inside a Ray worker. Errors are what would break training or evaluation; warnings are worth
knowing but harmless (a category nobody uses).

Instances that cannot be a training target are a warning, not an error, as in torchvision's
references and Detectron: a box of zero or negative width or height, a zero `area`, or a
segmentation with no polygon of three points or more (real COCO train2017 holds such records).
`training_problem` names the reason; training leaves those instances out, and evaluation keeps
them (`evaluable_segmentation` gives their masks a form COCOeval can read).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from study.errors import DataError

ImageCheck = Literal["none", "exists", "header", "decode"]


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    record: str  # e.g. "annotation 17", "image 3 (11.jpg)", "category 4 (walnut)", "file"
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.record}: {self.message}"


@dataclass
class CheckReport:
    """What a check found: counts for the summary, and every problem."""

    source: str
    images: int = 0
    instances: int = 0  # non-crowd annotations
    crowd: int = 0
    images_without_instances: int = 0
    categories: dict[int, str] = field(default_factory=dict)
    instances_per_category: dict[int, int] = field(default_factory=dict)
    images_per_category: dict[int, int] = field(default_factory=dict)
    images_checked: ImageCheck = "none"
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, record: str, message: str) -> None:
        self.problems.append(Problem("error", record, message))

    def warning(self, record: str, message: str) -> None:
        self.problems.append(Problem("warning", record, message))

    def summary(self) -> str:
        lines = [f"{self.source}: {self.images} images, {self.instances} instances"
                 f" (+{self.crowd} crowd), {len(self.categories)} categories;"
                 f" {self.images_without_instances} images without instances"]
        if self.categories:
            lines.append(f"  {'id':>5}  {'category':<24} {'instances':>9} {'images':>7}")
            for cid, name in sorted(self.categories.items()):
                lines.append(f"  {cid:>5}  {name[:24]:<24} {self.instances_per_category.get(cid, 0):>9}"
                             f" {self.images_per_category.get(cid, 0):>7}")
        lines.append({"none": "  image files: not checked (pass --images DIR)",
                      "exists": "  image files: existence checked",
                      "header": "  image files: existence, format and size checked",
                      "decode": "  image files: fully decoded"}[self.images_checked])
        return "\n".join(lines)

    def problems_text(self, limit: int | None = None) -> str:
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [f"{len(self.errors)} errors, {len(self.warnings)} warnings"]
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DataError(f"{self.source} cannot be used for training:\n"
                            + self.problems_text(limit=20)
                            + f"\n(run `study data check {self.source}` for the full report)")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def valid_polygons(seg: list[Any]) -> list[list[float]]:
    """The polygons of a polygon segmentation that draw an area: three points or more."""
    return [poly for poly in seg if isinstance(poly, list) and len(poly) >= 6]


def training_problem(ann: dict[str, Any]) -> str | None:
    """Why a (checked, non-crowd) annotation cannot be a training target, or None if it can.

    A box of zero or negative width or height gives NaN box-regression targets, a zero `area` or a
    segmentation without a polygon of three points gives an empty mask target."""
    _, _, w, h = ann["bbox"]
    if w <= 0 or h <= 0:
        return "zero width" if w == 0 else "zero height" if h == 0 else "negative size"
    area = ann.get("area")
    if _is_number(area) and area <= 0:
        return "zero area"
    seg = ann.get("segmentation")
    if isinstance(seg, list) and not valid_polygons(seg):
        return "empty segmentation"
    return None


def evaluable_segmentation(seg: Any, height: int, width: int) -> Any:
    """`seg` in a form COCOeval reads: polygons of fewer than three points dropped (pycocotools
    raises on them), and an empty mask (an all-zero RLE of the image's size) where none remains."""
    if not isinstance(seg, list):
        return seg
    polygons = valid_polygons(seg)
    if polygons:
        return polygons
    return {"size": [height, width], "counts": [height * width]}  # uncompressed: all background


def _check_segmentation(report: CheckReport, record: str, seg: Any, height: Any, width: Any) -> None:
    if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                report.error(record, f"polygon {i} is not a flat list of numbers")
            elif len(poly) % 2:
                report.error(record, f"polygon {i} has an odd number of coordinates ({len(poly)})")
    elif isinstance(seg, dict):  # RLE: {"size": [h, w], "counts": str | list}
        size = seg.get("size")
        if "counts" not in seg or not isinstance(size, list) or len(size) != 2:
            report.error(record, "RLE segmentation needs 'size': [height, width] and 'counts'")
        elif [height, width] != list(size):
            report.error(record, f"RLE size {size} differs from its image's [height, width] = "
                                 f"[{height}, {width}]")
    else:
        report.error(record, f"segmentation is missing or not polygons/RLE: {seg!r:.60}")


def _check_image_file(report: CheckReport, record: str, path: Path, width: Any, height: Any,
                      level: ImageCheck) -> None:
    if not path.is_file():
        report.error(record, f"image file not found: {path}")
        return
    if level == "exists":
        return
    try:
        with Image.open(path) as im:
            size = im.size
            if level == "decode":
                im.load()  # raises on a truncated file
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        report.error(record, f"image file cannot be read ({e}): {path}")
        return
    if size != (width, height):
        report.error(record, f"image file is {size[0]}x{size[1]} but the record says "
                             f"{width}x{height}: {path}")


def _untrainable_message(untrainable: dict[str, list[Any]], shown: int = 20) -> str:
    n = sum(len(ids) for ids in untrainable.values())
    parts = []
    for reason, ids in sorted(untrainable.items()):
        listed = ", ".join(str(i) for i in ids[:shown]) + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
        parts.append(f"{reason} ({len(ids)}): annotation {listed}")
    return (f"{n} instance(s) cannot be training targets and are left out of training (evaluation "
            "keeps them): " + "; ".join(parts))


def check_instances(data: Any, *, source: str = "annotations", image_root: str | Path | None = None,
                    images: ImageCheck = "header") -> CheckReport:
    """Check a parsed COCO instances dict (and, given `image_root`, its image files).

    `images` sets how far image files are checked: 'exists', 'header' (format and size) or
    'decode' (every pixel; finds truncated files). Without `image_root` files are not checked.
    """
    report = CheckReport(source=source, images_checked=images if image_root is not None else "none")
    if not isinstance(data, dict):
        report.error("file", "not a COCO instances file: the top level is not a JSON object")
        return report
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            report.error("file", f"not a COCO instances file: '{key}' is missing or not a list")
    if report.errors:
        return report
    _check_categories(report, data["categories"])
    declared = _check_images(report, data["images"])
    _check_annotations(report, data["annotations"], declared)
    if image_root is not None and images != "none":
        root = Path(image_root)
        if not root.is_dir():
            report.error("file", f"image folder not found: {root}")
        else:
            for iid, (name, h, w) in declared.items():
                _check_image_file(report, f"image {iid} ({name})", root / name, w, h, images)
    return report


def _check_categories(report: CheckReport, categories: list[Any]) -> None:
    """Ids: integers, each declared once (into `report.categories`); names shared: a warning."""
    for cat in categories:
        cid, name = (cat.get("id"), cat.get("name")) if isinstance(cat, dict) else (None, None)
        if not isinstance(cid, int) or isinstance(cid, bool):
            report.error(f"category {cid!r}", "category id is missing or not an integer")
        elif cid in report.categories:
            report.error(f"category {cid}", f"category id declared twice "
                                            f"({report.categories[cid]!r} and {name!r})")
        else:
            report.categories[cid] = str(name)
    names = collections.Counter(report.categories.values())
    for name, n in names.items():
        if n > 1:
            report.warning(f"category {name!r}", f"{n} categories share this name")


def _check_images(report: CheckReport, records: list[Any]) -> dict[int, tuple[str, Any, Any]]:
    """The declared images: {id: (file_name, height, width)}; bad ids, names and sizes reported."""
    declared: dict[int, tuple[str, Any, Any]] = {}
    for img in records:
        iid = img.get("id") if isinstance(img, dict) else None
        record = f"image {iid!r}"
        if not isinstance(iid, int) or isinstance(iid, bool):
            report.error(record, "image id is missing or not an integer")
            continue
        if iid in declared:
            report.error(record, "image id declared twice")
            continue
        fname, w, h = img.get("file_name"), img.get("width"), img.get("height")
        record = f"image {iid} ({fname})"
        if not isinstance(fname, str) or not fname:
            report.error(record, "file_name is missing")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            report.error(record, f"width/height must be positive integers, got {w!r}x{h!r}")
        declared[iid] = (str(fname), h, w)
    report.images = len(declared)
    return declared


def _check_annotations(report: CheckReport, annotations: list[Any], declared: dict[int, tuple[str, Any, Any]]) -> None:
    """Each annotation's ids, box, area and segmentation; the counts of the usable ones; the
    instances training cannot use, ids below 1 and unused categories as warnings."""
    seen_ann: set[Any] = set()
    images_with_instances: set[int] = set()
    images_per_cat: dict[int, set[int]] = collections.defaultdict(set)
    untrainable: dict[str, list[Any]] = collections.defaultdict(list)
    for ann in annotations:
        aid = ann.get("id") if isinstance(ann, dict) else None
        record = f"annotation {aid!r}"
        if aid is None or not isinstance(ann, dict):
            report.error(record, "annotation id is missing")
            continue
        if aid in seen_ann:
            report.error(record, "annotation id used twice")
            continue
        seen_ann.add(aid)
        if not _annotation_is_valid(report, record, ann, declared):  # counted only when it could be used
            continue
        if ann.get("iscrowd", 0):
            report.crowd += 1
            continue
        reason = training_problem(ann)
        if reason is not None:
            untrainable[reason].append(aid)
        cid = ann["category_id"]
        report.instances += 1
        report.instances_per_category[cid] = report.instances_per_category.get(cid, 0) + 1
        images_per_cat[cid].add(ann["image_id"])
        images_with_instances.add(ann["image_id"])
    low = sorted(a for a in seen_ann if isinstance(a, int) and not isinstance(a, bool) and a < 1)
    if low:
        report.warning(f"annotation {low[0]}", f"{len(low)} annotation id(s) below 1 (ids start at {low[0]}): "
                       "COCOeval reads a matched id 0 as 'unmatched', which would skew AP; handled: the "
                       "evaluation renumbers the annotations from 1 (nothing to fix in the file)")
    if untrainable:
        report.warning("annotations", _untrainable_message(untrainable))
    report.images_per_category = {c: len(s) for c, s in images_per_cat.items()}
    report.images_without_instances = len(set(declared) - images_with_instances)
    for cid, name in sorted(report.categories.items()):
        if cid not in report.instances_per_category:
            report.warning(f"category {cid} ({name})", "declared but never used by an instance")


def _annotation_is_valid(report: CheckReport, record: str, ann: dict[str, Any],
                         declared: dict[int, tuple[str, Any, Any]]) -> bool:
    """Report what is wrong with one annotation's image, category, box, area and segmentation;
    True if nothing is."""
    problems_before = len(report.problems)
    iid, cid = ann.get("image_id"), ann.get("category_id")
    if iid not in declared:
        report.error(record, f"image_id {iid!r} is not a declared image")
    if cid not in report.categories:
        report.error(record, f"category_id {cid!r} is not a declared category "
                             f"(declared: {sorted(report.categories)})")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        report.error(record, f"bbox must be [x, y, width, height], got {bbox!r:.60}")
    elif ann.get("area") is not None and not _is_number(ann["area"]):
        report.error(record, f"area must be a number, got {ann['area']!r:.60}")
    _, h, w = declared.get(iid, (None, None, None))
    _check_segmentation(report, record, ann.get("segmentation"), h, w)
    return len(report.problems) == problems_before


def check_file(annotations: str | Path, image_root: str | Path | None = None, *,
               images: ImageCheck = "header") -> tuple[CheckReport, Any]:
    """Read and check an annotations file: (report, parsed JSON or None if unreadable)."""
    path = Path(annotations)
    report = CheckReport(source=str(path))
    if not path.is_file():
        report.error("file", f"annotations file not found: {path}")
        return report, None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.error("file", f"not valid JSON: {e}")
        return report, None
    return check_instances(data, source=str(path), image_root=image_root, images=images), data
