"""The backbone's pre-training loop and its data (synthetic shapes, ImageFolder trees)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.config import PretrainConfig
from study.errors import DataError
from study.data.classification import ClassSynthSpec, load_image_folder, write_classification_set
from study.data.synthetic import SHAPES
from study.train.pretrain import cosine_lr

TINY = PretrainConfig(train_images=40, val_images=20, image_size=32, epochs=1.0, batch_size=8,
                      warmup_iters=2, norm="gn")


def test_cosine_lr_exact_values() -> None:
    lrs = [cosine_lr(i, 100, 0.1, 10) for i in (0, 4, 9, 10, 55, 100, 120)]
    assert lrs == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.05, 0.0, 0.0])


def test_classification_set_is_a_balanced_deterministic_image_folder(tmp_path: Path) -> None:
    spec = ClassSynthSpec(train_images=30, val_images=10, image_size=32, seed=1)
    root = write_classification_set(tmp_path / "a", spec)
    again = write_classification_set(tmp_path / "b", spec)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(SHAPES)
    assert all(len(list((root / "train" / c).iterdir())) == 3 for c in SHAPES)
    for f in (root / "val").rglob("*.png"):
        assert f.read_bytes() == (again / f.relative_to(root)).read_bytes()
    train, val, classes = load_image_folder(root, 32)
    assert (len(train), len(val), classes) == (30, 10, sorted(SHAPES))
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10


def test_image_folder_without_val_holds_out_a_tenth(tmp_path: Path) -> None:
    root = write_classification_set(tmp_path / "set", ClassSynthSpec(train_images=50, val_images=10,
                                                                     image_size=32))
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    (root / "val").rmdir()
    train, val, _ = load_image_folder(root, 32, seed=0)
    assert (len(train), len(val)) == (45, 5)
    assert load_image_folder(root, 32, seed=0)[1].indices == val.indices
    assert set(train.indices).isdisjoint(val.indices)
    with pytest.raises(DataError, match="is not an ImageFolder tree"):
        load_image_folder(tmp_path / "nothing", 32)


def test_training_augmentation_keeps_the_whole_image(tmp_path: Path) -> None:
    """No random crop: every training view of an image is the image or its mirror, so an
    off-centre object is never cropped out of its label."""
    root = write_classification_set(tmp_path / "set", ClassSynthSpec(train_images=10, val_images=10,
                                                                     image_size=32))
    train, val, _ = load_image_folder(root, 32)
    torch.manual_seed(0)
    plain = val.transform(train.loader(train.samples[3][0]))
    views = [train[3][0] for _ in range(12)]
    assert all(torch.equal(v, plain) or torch.equal(v, plain.flip(-1)) for v in views)
    assert any(torch.equal(v, plain.flip(-1)) for v in views) and any(torch.equal(v, plain) for v in views)
