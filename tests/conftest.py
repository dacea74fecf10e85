"""Shared fixtures: a small generated synthetic set and the real fruits_nuts set from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.data.synthetic import SynthSpec, SyntheticPaths, write_synthetic

REPO = Path(__file__).resolve().parents[1]
FRUITS = REPO.parent / "shared" / "data" / "fruits_nuts"


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    """24 train and 8 val images at 64 px (a second or two to generate)."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"),
                           SynthSpec(train_images=24, val_images=8, image_size=64, seed=0))


@pytest.fixture(scope="session")
def fruits() -> Path:
    """The real COCO-format set (18 photos, 165 polygons, 3 classes); read-only, never copied."""
    if not (FRUITS / "annotations.json").is_file():
        pytest.fail(f"the real dataset is missing: expected {FRUITS}/annotations.json "
                    "(../shared/data/fruits_nuts beside the project)")
    return FRUITS
