"""Classification data for the backbone's pre-training stage (the ImageNet analogue).

- `imagefolder:PATH`: any ImageFolder tree, `PATH/train/<class>/*` and `PATH/val/<class>/*`
  (ImageNet's train/ is one; its val/ must be sorted into class folders, as usual). Without a
  `val/` folder, a deterministic tenth of `train/` is held out.
- `synthetic`: generated here and written as such a tree. It is drawn from a *different*
  distribution than the detection set, as ImageNet differs from COCO: ten shape classes (the
  detection set has five), one object per image, off-centre, over a wide range of scales, on
  the same kind of shaded, blotchy, noisy backgrounds (a little calmer). Planning measurements
  (on 2 CPU cores) found that clean, centred shapes transfer nothing to detection; this harder,
  object-centric set is learnable in CPU minutes (a GroupNorm ResNet-18: 94% val accuracy, chance
  10%, after 800 iterations of 64 with bf16 autocast, 4 minutes), and a backbone pre-trained on
  it doubles the early bbox AP of the GN detector (bench/transfer.py; docs/internals.md has the table).

Images are normalised with ImageNet's mean and std, as torchvision's Mask R-CNN normalises its
input, so the backbone sees the same input statistics in both stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from study.data.synthetic import SHAPES, background, build_once, finish, paint, shape_polygon
from study.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's GeneralizedRCNNTransform defaults
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassSynthSpec:
    """The synthetic classification set: `train_images` + `val_images`, balanced over SHAPES."""

    train_images: int = 6000
    val_images: int = 500
    image_size: int = 64
    seed: int = 0


def render_classification_image(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """One square image (uint8 [size, size, 3]) whose object is of class `cls`."""
    img = background(rng, size, size, blobs=15.0, clutter=2)
    r = rng.uniform(0.15, 0.45) * size  # wide scale range
    cx, cy = rng.uniform(r, size - r, 2)  # off-centre, inside the frame
    shape = shape_polygon(SHAPES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.0))
    return finish(paint(img, rng, shape, texture=10.0), rng)


def write_classification_set(out: str | Path, spec: ClassSynthSpec = ClassSynthSpec(), *,
                             force: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Write (or reuse) the synthetic set as an ImageFolder tree `out/{train,val}/<class>/*.png`."""
    out = Path(out)

    def build() -> None:
        for split, count, code in (("train", spec.train_images, 1), ("val", spec.val_images, 2)):
            for name in SHAPES:
                (out / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                cls = index % len(SHAPES)
                rng = np.random.default_rng([spec.seed, 100 + code, index])
                pixels = render_classification_image(rng, spec.image_size, cls)
                Image.fromarray(pixels).save(out / split / SHAPES[cls] / f"{index:06d}.png")
                if progress and (index + 1) % 2000 == 0:
                    progress(f"  pretrain {split}: {index + 1}/{count} images")

    build_once(out, spec, build, force=force, stale=("train/*/*.png", "val/*/*.png"))
    return out


def classification_transforms(image_size: int, train: bool) -> Callable:
    """Resize + centre crop (+ a horizontal flip for training); ImageNet's mean and std.

    No random-resized crop: on images whose one object sits off-centre, a crop of half the area
    often cuts the object out, and the label is then noise (with `scale=(0.5, 1)` the default
    stand-in reached 24.8% val accuracy where this reaches 80%+; docs/internals.md).
    """
    resize = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    flip = [transforms.RandomHorizontalFlip()] if train else []
    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose([*resize, *flip, *normalize])


def load_image_folder(root: str | Path, image_size: int, seed: int = 0
                      ) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names) of an ImageFolder tree; see the module docstring."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(f"{root} is not an ImageFolder tree: expected {root / 'train'}/<class>/<images>")
    try:
        train = datasets.ImageFolder(root / "train", classification_transforms(image_size, True))
        if (root / "val").is_dir():
            val = datasets.ImageFolder(root / "val", classification_transforms(image_size, False))
            if val.classes != train.classes:
                raise DataError(f"{root}: val/ has classes {val.classes[:5]}..., train/ has "
                                f"{train.classes[:5]}...: they must be the same folders")
            return train, val, train.classes
    except FileNotFoundError as e:  # ImageFolder's "Couldn't find any class folder" / no images
        raise DataError(f"{root}: {e}") from None
    held_out = datasets.ImageFolder(root / "train", classification_transforms(image_size, False))
    perm = np.random.default_rng(seed).permutation(len(train)).tolist()
    n_val = max(1, len(train) // 10)
    return Subset(train, perm[n_val:]), Subset(held_out, perm[:n_val]), train.classes

