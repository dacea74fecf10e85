"""Shared fixtures: a small generated synthetic set, the real fruits_nuts set beside the project,
a tiny study config and trial that train in seconds, and an S3 stand-in (also one that fails on purpose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import StudyConfig, study_from_dict
from study.data.synthetic import SynthSpec, SyntheticPaths, write_synthetic
from study.plan.trials import Size, Trial

REPO = Path(__file__).resolve().parents[1]
FRUITS = REPO.parent / "shared" / "data" / "fruits_nuts"


CURVE_KEYS = ("loss", "loss_classifier", "loss_mask", "bbox_AP", "segm_AP")


def assert_same_curve(rows: list[dict], want: list[dict], iterations: list[int], *, tol: float = 1e-4,
                      what: str = "") -> None:
    """`rows` (a resumed trial's metric log) hold every evaluation of `iterations` once, and
    each has the losses and AP of `want` (an uninterrupted run's) within `tol`."""
    assert [r["iteration"] for r in rows] == iterations, what  # every evaluation once
    for got, expected in zip(rows, want, strict=True):
        for key in CURVE_KEYS:
            assert got[key] == pytest.approx(expected[key], abs=tol), (what, got["iteration"], key)


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


DEGENERATE = {0: "zero height", 7: "zero height", 12: "zero area"}  # annotation index -> what it gets


@pytest.fixture
def degenerate_fruits(fruits: Path, tmp_path: Path) -> tuple[Path, list[int]]:
    """fruits_nuts' annotations (images read from the shared folder) with two boxes of zero height
    and one of zero area, as real COCO train2017 has: (annotations file, their annotation ids)."""
    import json

    data = json.loads((fruits / "annotations.json").read_text())
    for index, kind in DEGENERATE.items():
        ann = data["annotations"][index]
        if kind == "zero height":
            ann["bbox"][3] = 0
        else:
            ann["area"] = 0
    path = tmp_path / "degenerate.json"
    path.write_text(json.dumps(data))
    return path, [data["annotations"][i]["id"] for i in DEGENERATE]


def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise


def _reset_s3(host_port: str) -> None:
    """Empty moto's stores (they live in this process, shared by every server it starts)."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://{host_port}/moto-api/reset", method="POST")).read()


def _s3_uri(host_port: str) -> str:
    return f"s3://study/runs?endpoint_override={host_port}&scheme=http&region=us-east-1&allow_bucket_creation=true"


@pytest.fixture
def flaky_s3(monkeypatch: pytest.MonkeyPatch):  # -> Iterator[tuple[str, Faults]]
    """(an S3 URI as `s3_uri`'s, the `tests.flaky_s3.Faults` its server injects: none until set)."""
    from tests.flaky_s3 import Faults, start_flaky_s3

    _fake_aws_credentials(monkeypatch)
    faults = Faults()
    server, host_port = start_flaky_s3(faults)
    _reset_s3(host_port)
    yield _s3_uri(host_port), faults
    faults.set(rate=0.0)
    _reset_s3(host_port)
    server.shutdown()


@pytest.fixture
def s3_uri(monkeypatch: pytest.MonkeyPatch):  # -> Iterator[str]
    """An S3 URI served by moto's S3 server on localhost (the real S3 protocol through pyarrow, no
    AWS account, no network): `s3://study/runs?endpoint_override=...`. The fake credentials are
    in the environment, so Ray workers started after this fixture inherit them."""
    from moto.server import ThreadedMotoServer

    _fake_aws_credentials(monkeypatch)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _reset_s3(f"{host}:{port}")
    yield _s3_uri(f"{host}:{port}")
    _reset_s3(f"{host}:{port}")
    server.stop()
