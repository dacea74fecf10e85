"""Shared fixtures: a small generated synthetic set, the real fruits_nuts set beside the project,
a tiny study config and trial that train in seconds, and an S3 stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import StudyConfig, study_from_dict
from study.data.synthetic import SynthSpec, SyntheticPaths, write_synthetic
from study.plan.trials import Size, Trial

REPO = Path(__file__).resolve().parents[1]
FRUITS = REPO.parent / "shared" / "data" / "fruits_nuts"


@pytest.fixture(scope="session")
def tiny_cfg() -> StudyConfig:
    """A study whose 1x is 8 iterations of 4 images at 64 px (ResNet-18 GN, tiny heads): a
    trial trains in seconds on one CPU thread."""
    return study_from_dict({
        "name": "trial_smoke",
        "data": {"synthetic": {"train_images": 24, "val_images": 6, "image_size": 64}},
        "model": {"backbone": "resnet18", "norm": "gn", "profile": "tiny", "min_size": 64, "max_size": 64},
        "solver": {"base_lr": 0.01, "ims_per_batch": 4, "unit_iters": 8, "drops_before_end": [4, 2],
                   "warmup_iters": 2, "eval_period": 4},
        "grid": {"schedule": [1]},
    })


@pytest.fixture(scope="session")
def tiny_trial() -> Trial:
    """Scratch, 1x, 16 training images, LR 0.01, seed 0."""
    return Trial(init="scratch", schedule=1, base_lr=0.01, seed=0, size=Size(16))


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


@pytest.fixture
def s3_uri(monkeypatch: pytest.MonkeyPatch):  # -> Iterator[str]
    """An S3 URI served by moto's S3 server on localhost (the real S3 protocol through pyarrow, no
    AWS account, no network): `s3://study/runs?endpoint_override=...`. The fake credentials are
    in the environment, so Ray workers started after this fixture inherit them."""
    import logging

    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield (f"s3://study/runs?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
           "&allow_bucket_creation=true")
    server.stop()
