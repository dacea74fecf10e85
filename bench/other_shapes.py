"""An ImageFolder tree of the five shape classes the detector does not detect (pentagon, cross,
ring, crescent, arrow): a stand-in pre-training set that shares the renderer with the detection
set but none of its classes. Rendered as the default stand-in's set is (one object per image,
`render_classification_image`), balanced over the five classes.

    python bench/other_shapes.py --out data/other_shapes
    study pretrain --study search_spaces/default.yaml --data imagefolder:data/other_shapes \\
        --out data/other_shapes.pt
    python bench/sizing.py --variants b4_few_n3000_pretrained --weights data/other_shapes.pt \\
        --images 1200,2400,3600,4800,7200 --seeds 0,1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from study.data.classification import render_classification_image
from study.data.synthetic import CLASSES, SHAPES

OTHER = tuple(i for i, name in enumerate(SHAPES) if name not in CLASSES)


def write(out: Path, train_images: int, val_images: int, image_size: int, seed: int) -> None:
    for split, count, code in (("train", train_images, 1), ("val", val_images, 2)):
        for index in range(count):
            cls = OTHER[index % len(OTHER)]
            folder = out / split / SHAPES[cls]
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, 100 + code, index])
            Image.fromarray(render_classification_image(rng, image_size, cls)).save(folder / f"{index:06d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    write(args.out, args.train_images, args.val_images, args.image_size, args.seed)
    print(f"wrote {args.train_images} + {args.val_images} images of {', '.join(SHAPES[i] for i in OTHER)} "
          f"to {args.out}")


if __name__ == "__main__":
    main()
