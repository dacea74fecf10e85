"""The embedded synthetic dataset: a real COCO instance-segmentation set, generated offline.

Several shape classes with random colour, size, rotation and overlap, on textured, shaded and
noisy backgrounds with faint clutter. Objects are placed one after another, later ones
occluding earlier ones; each instance's segmentation is the exact polygon of its *visible*
part (shapely differences), so ground truth matches what is drawn. A placement that would cut
an earlier object into slivers, or leave a hole in it (which COCO polygons cannot express), is
drawn again. Rendering is 4x supersampled, so edges are anti-aliased like a photograph's.

Every image is a pure function of (seed, split, index): a larger set extends a smaller one.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from study.errors import require

CLASSES = ("circle", "triangle", "square", "star", "hexagon")  # the detection classes
_SPLIT_CODE = {"train": 1, "val": 2}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SynthSpec:
    """What `study data synth` generates. Defaults fit a CPU study (small images)."""

    train_images: int = 1000
    val_images: int = 100
    image_size: int = 64  # the longer side; the shorter one is drawn in [0.75, 1] of it
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 4
    min_radius: float = 0.14  # an object's circumradius, as a fraction of the image's shorter side
    max_radius: float = 0.36
    # "shape": one category per shape class (CLASSES); "object": every instance is one category,
    # "object" (class-agnostic detection: what to find, not what it is)
    labels: str = "shape"
    # the shape classes drawn (a subset of CLASSES, in CLASSES' order): fewer classes, less to
    # tell apart
    classes: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        require(self.train_images >= 1, "train_images", f"{self.train_images!r} must be >= 1")
        require(self.val_images >= 1, "val_images", f"{self.val_images!r} must be >= 1")
        require(self.image_size >= 32, "image_size", f"{self.image_size!r} must be >= 32 pixels")
        require(1 <= self.min_objects <= self.max_objects, "max_objects",
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        require(0.05 <= self.min_radius <= self.max_radius <= 0.5, "max_radius",
                f"need 0.05 <= min_radius <= max_radius <= 0.5 (of the shorter side), got "
                f"{self.min_radius}, {self.max_radius}")
        require(self.labels in ("shape", "object"), "labels", f"{self.labels!r} must be 'shape' or 'object'")
        require(len(self.classes) >= 1 and list(self.classes) == [c for c in CLASSES if c in self.classes],
                "classes", f"{list(self.classes)!r} must be a non-empty subset of {list(CLASSES)}, in that order")

    @property
    def categories(self) -> tuple[str, ...]:
        """The detection categories, in category-id order (1, 2, ...)."""
        return tuple(self.classes) if self.labels == "shape" else ("object",)


@dataclass(frozen=True)
class SyntheticPaths:
    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path


def _regular(n: int, start: float = -math.pi / 2) -> np.ndarray:
    t = start + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _unit_shape(kind: str, aspect: float) -> BaseGeometry:
    """A shape of circumradius ~1 around the origin."""
    if kind == "circle":
        return Polygon(_regular(40) * np.array([1, aspect]))
    if kind == "triangle":
        return Polygon(_regular(3))
    if kind == "square":
        return Polygon(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array([1, aspect]) / math.sqrt(2))
    if kind == "star":
        return Polygon(_regular(10) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None])
    if kind == "hexagon":
        return Polygon(_regular(6, 0.0))
    if kind == "pentagon":
        return Polygon(_regular(5))
    if kind == "cross":
        a, b = 0.3, 0.95
        return Polygon([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
                        (-b, a), (-b, -a), (-a, -a)])
    if kind == "ring":
        return Polygon(_regular(40), [_regular(40)[::-1] * 0.55])
    if kind == "crescent":
        return Polygon(_regular(40)).difference(Polygon(_regular(40) * 0.85 + np.array([0.45, 0.0])))
    if kind == "arrow":
        return Polygon([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)])
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")


SHAPES = ("circle", "triangle", "square", "star", "hexagon", "pentagon", "cross", "ring",
          "crescent", "arrow")


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float, aspect: float = 1.0
                  ) -> BaseGeometry:
    """A shape of circumradius r centred at (cx, cy), rotated by `angle`, stretched by `aspect`."""
    return affinity.translate(affinity.scale(affinity.rotate(_unit_shape(kind, aspect), angle,
                                                             origin=(0, 0), use_radians=True),
                                             r, r, origin=(0, 0)), cx, cy)


def _parts(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if not g.is_empty]
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and g.area > 0]


def _acceptable(visible: BaseGeometry, full_area: float) -> bool:
    """Enough of an object stays visible, in solid pieces, with no holes."""
    parts = _parts(visible)
    return (bool(parts) and visible.area >= 0.4 * full_area
            and all(not p.interiors and p.area >= 6.0 for p in parts))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid upsampled bicubically."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    img = Image.fromarray(grid, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def background(rng: np.random.Generator, h: int, w: int, *, blobs: float = 30.0, clutter: int = 3
               ) -> np.ndarray:
    """A shaded, blotchy, noisy background with up to `clutter` faint lines (float [H, W, 3])."""
    base = rng.uniform(30, 225, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * xx / w + np.sin(direction) * yy / h)[..., None]
    img = base + rng.uniform(-40, 40) * ramp
    img = img + np.stack([_smooth_noise(rng, h, w, int(rng.integers(3, 7))) for _ in range(3)], -1) * blobs
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, clutter + 1))):  # faint clutter that is not an object
        x0, y0, x1, y1 = rng.uniform(0, [w, h, w, h])
        shade = tuple(int(v) for v in np.clip(base + rng.uniform(-50, 50, 3), 0, 255))
        draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32)


def _coverage(shape: BaseGeometry, h: int, w: int) -> np.ndarray:
    """The anti-aliased coverage [H, W, 1] in [0, 1] of a shape (holes included), by 4x supersampling."""
    big = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for part in _parts(shape):
        draw.polygon([(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in part.exterior.coords], fill=255)
        for hole in part.interiors:
            draw.polygon([(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in hole.coords], fill=0)
    return np.asarray(big.resize((w, h), Image.BOX), dtype=np.float32)[..., None] / 255.0


def paint(img: np.ndarray, rng: np.random.Generator, shape: BaseGeometry, *, texture: float = 20.0
          ) -> np.ndarray:
    """`img` (float [H, W, 3]) with `shape` painted on: a colour that stands out from the image's
    mean, a random shading gradient and a low-frequency texture, anti-aliased edges."""
    height, width = img.shape[:2]
    color = rng.uniform(0, 255, 3)
    while np.abs(color - img.mean((0, 1))).sum() < 90:
        color = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shading = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None] / min(height, width) * 35
    pattern = _smooth_noise(rng, height, width, int(rng.integers(4, 10)))[..., None] * texture
    alpha = _coverage(shape, height, width)
    return img * (1 - alpha) + (color + shading + pattern) * alpha


def finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise, then 8-bit pixels."""
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def render_image(rng: np.random.Generator, width: int, height: int, n_objects: int,
                 radius: tuple[float, float], classes: tuple[str, ...] = CLASSES
                 ) -> tuple[np.ndarray, list[tuple[int, list[Polygon]]]]:
    """One image (uint8 [H, W, 3]) and its instances: (index in `classes`, visible polygon parts);
    each object's circumradius is drawn from `radius` (fractions of the shorter side)."""
    img = background(rng, height, width)
    frame = box(0, 0, width, height)
    placed: list[tuple[int, Polygon, float]] = []  # (class, full clipped shape, its area)
    visible: list[BaseGeometry] = []
    short = min(width, height)
    min_area = 0.25 * math.pi * (radius[0] * short) ** 2  # a quarter of the smallest circle: not a sliver
    for _ in range(n_objects):
        for _attempt in range(30):
            cls = int(rng.integers(len(classes)))
            r = rng.uniform(*radius) * short
            cx, cy = rng.uniform(0.15 * width, 0.85 * width), rng.uniform(0.15 * height, 0.85 * height)
            shape = shape_polygon(classes[cls], cx, cy, r, rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.0))
            shape = shape.intersection(frame)
            if not isinstance(shape, Polygon) or shape.area < min_area:
                continue
            occluded = [v.difference(shape) for v in visible]
            if all(_acceptable(o, a) for o, (_, _, a) in zip(occluded, placed)):
                visible = occluded + [shape]
                placed.append((cls, shape, shape.area))
                break
    for _, shape, _ in placed:  # drawn bottom to top: later objects occlude earlier ones
        img = paint(img, rng, shape)
    instances = [(cls, _parts(v)) for (cls, _, _), v in zip(placed, visible)]
    return finish(img, rng), instances


def _annotation(ann_id: int, image_id: int, cls: int, parts: list[Polygon], h: int, w: int) -> dict:
    segmentation = [[round(float(v), 2) for xy in list(p.exterior.coords)[:-1] for v in xy]
                    for p in parts]
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    x0 = min(p.bounds[0] for p in parts)
    y0 = min(p.bounds[1] for p in parts)
    x1 = max(p.bounds[2] for p in parts)
    y1 = max(p.bounds[3] for p in parts)
    return {"id": ann_id, "image_id": image_id, "category_id": cls + 1,
            "segmentation": segmentation, "area": float(mask_utils.area(rle)),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "iscrowd": 0}


def write_split(out: Path, split: str, count: int, spec: SynthSpec,
                progress: Callable[[str], None] | None = None) -> Path:
    """Write `<out>/<split>/*.png` and `<out>/<split>.json`; return the JSON path."""
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split], index])
        long_side = spec.image_size
        short_side = int(rng.integers(round(0.75 * long_side), long_side + 1))
        width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
        pixels, instances = render_image(rng, width, height, n_objects, (spec.min_radius, spec.max_radius),
                                         tuple(spec.classes))
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cls, parts in instances:
            label = cls if spec.labels == "shape" else 0
            annotations.append(_annotation(len(annotations) + 1, image_id, label, parts, height, width))
        if progress and (index + 1) % 250 == 0:
            progress(f"  {split}: {index + 1}/{count} images")
    coco = {"info": {"description": "rethinking-pretraining-study synthetic shapes",
                     "spec": asdict(spec)},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                           for k, name in enumerate(spec.categories)]}
    path = out / f"{split}.json"
    path.write_text(json.dumps(coco))
    return path


def synthetic_paths(out: str | Path) -> SyntheticPaths:
    out = Path(out)
    return SyntheticPaths(out / "train.json", out / "train", out / "val.json", out / "val")


def build_once(out: Path, spec: Any, build: Callable[[], None], *, force: bool = False,
               stale: tuple[str, ...] = ()) -> bool:
    """Run `build()` to fill `out` unless `out` already holds a complete build of `spec`.

    A marker with the spec is written last, so an interrupted build is redone; files matching
    the `stale` globs are removed first (a smaller set must not keep a larger one's images).
    Returns whether it built.
    """
    marker = out / "synth_spec.json"
    want = json.loads(json.dumps(asdict(spec)))  # as the marker reads back (tuples become lists)
    if not force and marker.is_file() and json.loads(marker.read_text()) == want:
        return False
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "synth.lock", "w") as lock:  # trials starting together on one node build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and marker.is_file() and json.loads(marker.read_text()) == want:
            return False  # another process built it while this one waited
        marker.unlink(missing_ok=True)
        for pattern in stale:
            for path in out.glob(pattern):
                path.unlink()
        build()
        marker.write_text(json.dumps(want))
    return True


def write_synthetic(out: str | Path, spec: SynthSpec = SynthSpec(), *, force: bool = False,
                    progress: Callable[[str], None] | None = None) -> SyntheticPaths:
    """Generate the train and val splits into `out`, or reuse them if `out` holds this spec."""
    out = Path(out)

    def build() -> None:
        write_split(out, "train", spec.train_images, spec, progress)
        write_split(out, "val", spec.val_images, spec, progress)

    build_once(out, spec, build, force=force, stale=("train/[0-9]*.png", "val/[0-9]*.png"))
    return synthetic_paths(out)
