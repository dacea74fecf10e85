"""A torch Dataset over any COCO-format instances file, through pycocotools.

`load_coco` reads and checks the file (the checks of `study data check`; bad data is refused
with the record ids, never a traceback from deep inside torch) and builds the mapping between
COCO category ids and the contiguous labels torchvision's Mask R-CNN wants (1..K, 0 is
background); evaluation maps labels back with `CocoSplit.category_ids`.

`InstanceDataset` yields (image, target) in torchvision's detection convention: a float image in
[0, 1] of shape [3, H, W]; `boxes` (float32 [N, 4], x1 y1 x2 y2), `labels` (int64 [N]), `masks`
(uint8 [N, H, W]), plus `image_id` and the `scale` from the original image, so predictions can be
mapped back for COCOeval. Crowd annotations are left out of the targets, as Detectron and
torchvision's reference do; COCOeval still sees them in the ground truth, as ignore regions. So are
instances that cannot be a target (`study.data.checks.training_problem`: a box without width or
height, a zero area, no polygon of three points), which `study data check` reports as a warning;
evaluation keeps them.
Augmentation is the paper's: horizontal flip only, and a resize to a short side / max size.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from study.data.checks import ImageCheck, check_file, training_problem, valid_polygons
from study.errors import DataError


@dataclass(frozen=True)
class CocoSplit:
    """A checked COCO instances file, indexed by pycocotools."""

    coco: COCO
    annotations: Path
    image_root: Path
    category_ids: tuple[int, ...]  # label k (1-based) is COCO category category_ids[k - 1]
    category_names: tuple[str, ...]
    image_ids: tuple[int, ...]  # sorted; without images that have no instance when filtered

    @property
    def num_classes(self) -> int:
        """Foreground classes (torchvision's `num_classes` is this + 1 for the background)."""
        return len(self.category_ids)


def index_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over already-parsed (and checked) instances data."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


def load_coco(annotations: str | Path, image_root: str | Path, *, filter_empty: bool = False,
              images: ImageCheck = "exists") -> CocoSplit:
    """Read, check and index a COCO instances file; raise DataError naming every bad record.

    `filter_empty` drops images without an instance training can use (training does; evaluation
    must not). `images` is how far image files are checked up front ('exists' is cheap even for
    COCO's 118k images; `study data check` decodes them all).
    """
    report, data = check_file(annotations, image_root, images=images)
    report.raise_if_errors()
    coco = index_coco(data)
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    ids = sorted(coco.imgs)
    if filter_empty:
        ids = [i for i in ids if training_targets(coco.imgToAnns.get(i, []))]
    return CocoSplit(coco=coco, annotations=Path(annotations).resolve(),
                     image_root=Path(image_root).resolve(),
                     category_ids=tuple(c["id"] for c in cats),
                     category_names=tuple(str(c["name"]) for c in cats), image_ids=tuple(ids))


def training_targets(anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The annotations of an image that training uses: not crowd, and not `training_problem`."""
    return [a for a in anns if not a.get("iscrowd", 0) and training_problem(a) is None]


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int, float]:
    """(new height, new width, scale): the short side to `min_size`, the long side at most
    `max_size` (Detectron's ResizeShortestEdge and torchvision's GeneralizedRCNNTransform)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return round(height * scale), round(width * scale), scale


def annotation_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The binary mask [H, W] (uint8) of a polygon or RLE (compressed or not) segmentation."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(valid_polygons(seg), height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


class InstanceDataset(Dataset):
    """Images and instance targets of a COCO split (or a subset of its images).

    Index with an int, or with an (int, flip) pair as `IterationBatchSampler` yields.
    """

    def __init__(self, split: CocoSplit, image_ids: list[int] | tuple[int, ...] | None = None, *,
                 min_size: int | None = None, max_size: int | None = None) -> None:
        self.split = split
        self.image_ids = tuple(split.image_ids if image_ids is None else image_ids)
        unknown = set(self.image_ids) - set(split.coco.imgs)
        if unknown:
            raise DataError(f"image ids not in {split.annotations}: {sorted(unknown)[:10]}")
        if (min_size is None) != (max_size is None):
            raise ValueError("give both min_size and max_size, or neither")
        self.min_size, self.max_size = min_size, max_size
        self._label = {cid: k + 1 for k, cid in enumerate(split.category_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def instances(self, index: int) -> int:
        """The number of training instances of image `index` (for the samples-seen counters)."""
        return len(training_targets(self.split.coco.imgToAnns.get(self.image_ids[index], [])))

    def _read_image(self, info: dict[str, Any]) -> Image.Image:
        path = self.split.image_root / info["file_name"]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError) as e:
            raise DataError(f"image {info['id']} ({path}) cannot be read: {e}") from None

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        image_id = self.image_ids[index]
        info = self.split.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        pil = self._read_image(info)
        if pil.size != (width, height):
            raise DataError(f"image {image_id} ({info['file_name']}) is {pil.size[0]}x{pil.size[1]}"
                            f" but its record says {width}x{height}")

        anns = training_targets(self.split.coco.imgToAnns.get(image_id, []))
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        if anns:
            masks = torch.from_numpy(np.stack([annotation_mask(a, height, width) for a in anns]))
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)

        scale = 1.0
        if self.min_size is not None and self.max_size is not None:
            new_h, new_w, scale = resized_shape(height, width, self.min_size, self.max_size)
            if (new_h, new_w) != (height, width):
                pil = pil.resize((new_w, new_h), Image.BILINEAR)
                boxes[:, 0::2] *= new_w / width
                boxes[:, 1::2] *= new_h / height
                if len(masks):
                    masks = F.interpolate(masks[None].float(), size=(new_h, new_w),
                                          mode="nearest")[0].to(torch.uint8)
                else:
                    masks = torch.zeros((0, new_h, new_w), dtype=torch.uint8)
                height, width = new_h, new_w

        image = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        if flip:
            image = image.flip(-1)
            masks = masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)

        # Degenerate boxes (a sliver clipped at the border) would give NaN regression targets.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep],
                  "image_id": image_id, "scale": scale, "flipped": flip}
        return image.float().div_(255.0), target


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches are lists (images differ in size); torchvision's model pads them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def split_coco(annotations: str | Path, out_dir: str | Path, *, val_fraction: float = 0.25,
               seed: int = 0) -> tuple[Path, Path]:
    """Write a deterministic train/val split of one COCO file (for sets that ship none).

    Images are shuffled with `seed` and the first `val_fraction` go to val; the image records,
    their annotations and all categories are kept as they are, so the original image folder
    serves both files. Returns (train.json, val.json) in `out_dir`.
    """
    report, data = check_file(annotations, None, images="none")
    report.raise_if_errors()
    ids = sorted(img["id"] for img in data["images"])
    n_val = max(1, round(len(ids) * val_fraction))
    if n_val >= len(ids):
        raise DataError(f"{annotations} has {len(ids)} images: too few to hold out {n_val} for val")
    perm = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in perm[:n_val]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        part = {**data, "images": [im for im in data["images"] if keep(im["id"])],
                "annotations": [a for a in data["annotations"] if keep(a["image_id"])]}
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(part))
        paths.append(path)
    return paths[0], paths[1]
