"""A study's annotations, image folders and pretrained weights as s3:// URIs on the S3 stand-in:
each node pulls each object once into its own folder, checked by size, never half-visible; a
study reads them on a two-node Ray cluster."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
import yaml

from study import layout
from study.config import load_study, study_from_dict
from study.data.synthetic import SynthSpec, write_synthetic
from study.tune.inputs import localized, pull
from study.tune.preflight import check_study_data
from study.tune.storage import Store


def _uri(s3: str, rel: str) -> str:
    """`rel` in the stand-in's bucket, with its endpoint query (s3://study/runs?... -> s3://study/rel?...)."""
    location, _, query = s3.partition("?")
    return f"{location.rsplit('/', 1)[0]}/{rel}?{query}"


def _upload(s3: str, tmp_path: Path) -> dict[str, str]:
    """A generated COCO-format set and a GN ResNet-18 backbone put in the store; their URIs."""
    from models.classifier import backbone_state, build_classifier

    paths = write_synthetic(tmp_path / "set", SynthSpec(train_images=16, val_images=4, image_size=64, seed=3))
    store = Store(_uri(s3, "inputs"))
    for local, rel in ((paths.train_annotations, "train.json"), (paths.val_annotations, "val.json")):
        store.put(local, rel)
    store.put_tree(paths.train_images, "train")
    store.put_tree(paths.val_images, "val")
    torch.manual_seed(0)
    weights = tmp_path / "r18_gn.pt"
    torch.save({"backbone": backbone_state(build_classifier(backbone="resnet18", norm="gn", num_classes=10))}, weights)
    store.put(weights, "weights/r18_gn.pt")
    return {name: _uri(s3, f"inputs/{name}") for name in ("train.json", "val.json", "train", "val", "weights/r18_gn.pt")}


def _object_gets(faults, prefix: str = "/study/inputs/") -> dict[str, int]:
    return {k: n for k, n in faults.gets.items() if k.startswith(prefix)}


def test_an_input_is_pulled_once_per_node_checked_and_never_half_visible(
        flaky_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, faults = flaky_s3
    uris = _upload(s3, tmp_path)
    images = sorted((tmp_path / "set" / "train").iterdir())
    for node in ("a", "b"):
        monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / f"node_{node}"))
        said: list[str] = []
        copies = []
        threads = [threading.Thread(target=lambda: copies.append(pull(uris["train"], folder=True, progress=said.append)))
                   for _ in range(3)]  # three trials of the node start at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(said) == 1 and said[0].startswith(f"pulling {len(images)} files")  # one pull, the others waited
        assert len(set(copies)) == 1 and sorted(p.name for p in copies[0].iterdir()) == [p.name for p in images]
        assert all((copies[0] / p.name).read_bytes() == p.read_bytes() for p in images)
        assert pull(uris["train.json"], progress=said.append).read_bytes() == (tmp_path / "set" / "train.json").read_bytes()
    gets = _object_gets(faults)
    assert set(gets) == {f"/study/inputs/train/{p.name}" for p in images} | {"/study/inputs/train.json"}
    assert set(gets.values()) == {2}  # each object once per node

    # a pull cut short (the node lost mid-way: no record written, a file half there) is finished,
    # fetching only what is missing or of the wrong size
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / "node_c"))
    copy = pull(uris["train"], folder=True, progress=lambda _: None)
    (copy.parent / layout.PULLED).unlink()
    (copy / images[0].name).write_bytes(b"half")
    (copy / images[1].name).unlink()
    faults.gets.clear()
    pull(uris["train"], folder=True, progress=lambda _: None)
    assert _object_gets(faults) == {f"/study/inputs/train/{images[0].name}": 1, f"/study/inputs/train/{images[1].name}": 1}
    assert (copy / images[0].name).read_bytes() == images[0].read_bytes()
    # downloads cut short by the server are retried until the size is right
    faults.set(rate=1.0, kinds=("cut",), only="r18_gn")
    threading.Timer(2.0, lambda: faults.set(rate=0.0)).start()
    weights = pull(uris["weights/r18_gn.pt"], progress=lambda _: None)
    assert weights.read_bytes() == (tmp_path / "r18_gn.pt").read_bytes()
    with pytest.raises(FileNotFoundError, match="no such object"):
        pull(_uri(s3, "inputs/nope.json"), progress=lambda _: None)


def test_the_preflight_lists_uri_image_folders_and_localized_configs_read_the_copies(
        flaky_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, faults = flaky_s3
    uris = _upload(s3, tmp_path)
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / "head"))
    cfg = study_from_dict({"name": "uri", "data": {"source": "coco",
                                                   "train": {"annotations": uris["train.json"], "images": uris["train"]},
                                                   "val": {"annotations": uris["val.json"], "images": uris["val"]}},
                           "model": {"backbone": "resnet18", "norm": "gn", "profile": "tiny", "min_size": 64,
                                     "max_size": 64, "pretrained_weights": uris["weights/r18_gn.pt"]},
                           "grid": {"train_images": [8]}})
    said: list[str] = []
    check_study_data(cfg, tmp_path / "data", progress=said.append)
    assert said[-1].startswith("data: every image file is in the store")
    assert not any("/study/inputs/train/" in k for k in _object_gets(faults))  # the head pulled no image
    local, weights = localized(cfg, cfg.model.pretrained_weights, progress=lambda _: None)
    assert Path(local.data.train.images).is_dir() and Path(local.data.val.annotations).is_file()
    assert Path(weights).name == "r18_gn.pt" and Path(weights).is_file()
    # an image the annotations name but the store lacks is named before any trial
    Store(_uri(s3, "inputs")).delete("val/" + json.loads((tmp_path / "set" / "val.json").read_text())["images"][0]["file_name"])
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / "head2"))
    from study.errors import DataError

    with pytest.raises(DataError, match=r"1 image file\(s\) of .* are not in s3://study/inputs/val"):
        check_study_data(cfg, tmp_path / "data")


@pytest.mark.slow
def test_a_study_reads_its_inputs_from_s3_on_two_nodes(flaky_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.study.tune.test_node_loss import LocalCluster, _run_study

    s3, faults = flaky_s3
    uris = _upload(s3, tmp_path)
    space = tmp_path / "uri.yaml"
    space.write_text(yaml.safe_dump({
        "name": "uri",
        "data": {"source": "coco", "train": {"annotations": uris["train.json"], "images": uris["train"]},
                 "val": {"annotations": uris["val.json"], "images": uris["val"]}},
        "model": {"backbone": "resnet18", "norm": "gn", "profile": "tiny", "min_size": 64, "max_size": 64,
                  "pretrained_weights": uris["weights/r18_gn.pt"]},
        "solver": {"base_lr": 0.01, "ims_per_batch": 2, "unit_iters": 4, "drops_before_end": [2, 1],
                   "warmup_iters": 1, "eval_period": 4},
        "grid": {"init": ["scratch", "pretrained"], "schedule": [1], "train_images": [8], "seeds": [0]},
        "lr": {"values": [0.01, 0.02]},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2}}))
    cluster = LocalCluster(tmp_path, monkeypatch)
    try:
        cluster.add("a")
        cluster.add("b")
        faults.gets.clear()
        study = _run_study(space, cluster, s3, tmp_path / "study.log")
        assert study.wait(timeout=500) == 0, (tmp_path / "study.log").read_text()[-4000:]
    finally:
        cluster.shutdown()
    out = (tmp_path / "study.log").read_text()
    run = load_study(space)
    store = Store(s3)
    trials = store.listdir(layout.trial_path(run.name))
    assert len(trials) == 4
    for trial in trials:
        rows = [json.loads(line) for line in store.read_text(f"{layout.trial_path(run.name, trial)}/{layout.METRICS}").splitlines()]
        assert rows[-1]["status"] == "finished", (trial, out[-3000:])
    # every node that ran trials pulled each object once; the driver only what its checks read
    disks = {"driver": tmp_path / "driver", "a": cluster.disk("a"), "b": cluster.disk("b")}
    pulled = {label: {name for name, uri in uris.items()
                      if (d / layout.INPUTS / hashlib.sha256(uri.encode()).hexdigest()[:16] / layout.PULLED).is_file()}
              for label, d in disks.items()}
    assert pulled["a"] == pulled["b"] == set(uris), pulled  # both nodes ran trials
    assert pulled["driver"] == {"train.json", "val.json", "weights/r18_gn.pt"}  # no image
    gets = _object_gets(faults)
    images = {f"{split}/{p.name}" for split in ("train", "val") for p in (tmp_path / "set" / split).iterdir()}
    assert {k[len("/study/inputs/"):] for k in gets} == images | {"train.json", "val.json", "weights/r18_gn.pt"}
    for key, n in gets.items():
        rel = key[len("/study/inputs/"):]
        name = rel if rel in uris else rel.split("/", 1)[0]
        assert n == sum(name in names for names in pulled.values()), (key, n, pulled)
