"""The pretrained arm's weights: pre-trained in this process or on Ray Train workers, cached,
loaded by the detector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.init import FreshNorms, load_backbone
from models.mask_rcnn import build_mask_rcnn
from study.cli import main
from study.config import PretrainConfig, StudyConfig, study_from_dict
from study.errors import ConfigError
from study.train.build import build_detector
from study.train.pretrain import PretrainRecord
from study.train.pretrain import cached_checkpoint_path
from study.tune.weights import ensure_pretrained, run_pretrain, study_weights

TINY = PretrainConfig(train_images=40, val_images=20, image_size=32, epochs=1.0, batch_size=8,
                      warmup_iters=2, norm="gn")


def test_pretrain_writes_a_checkpoint_the_detector_loads(tmp_path: Path) -> None:
    out = tmp_path / "ckpt.pt"
    record = run_pretrain(TINY, backbone="resnet18", out=out, data_dir=tmp_path / "data",
                          progress=lambda _m: None)
    saved = torch.load(out, weights_only=True)
    assert PretrainRecord.from_meta(saved["meta"]) == record and saved["meta"] == record.to_dict()
    assert record.iterations == 5 and record.images_seen == 40 == 5 * 8
    assert record.instances_seen == 40 and record.pixels_seen == 40 * 32 * 32
    assert record.classes == 10 and record.chance_accuracy == 0.1 and 0 <= record.val_accuracy <= 1
    assert (record.backbone, record.norm, record.image_size) == ("resnet18", "gn", 32)
    assert PretrainRecord.from_meta({"torchvision_weights": "ResNet50_Weights.IMAGENET1K_V1"}) is None
    assert not any(k.startswith("fc.") for k in saved["backbone"])
    detector = build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=5, profile="tiny",
                               min_size=64, max_size=64)
    report = load_backbone(detector, out)
    assert len(report.loaded) == len(saved["backbone"]) and not report.note
    assert report.meta["images_seen"] == 40
    assert not list(tmp_path.glob("*.tmp"))


def test_ensure_pretrained_trains_once_then_reuses(tmp_path: Path) -> None:
    said: list[str] = []
    path = ensure_pretrained(TINY, backbone="resnet18", cache_dir=tmp_path, progress=said.append)
    assert path == cached_checkpoint_path(TINY, "resnet18", tmp_path) and path.is_file()
    assert path.name.startswith("pretrain-resnet18-gn-") and "not cached yet" in said[0]
    stamp = path.stat().st_mtime_ns
    assert ensure_pretrained(TINY, backbone="resnet18", cache_dir=tmp_path, progress=said.append) == path
    assert path.stat().st_mtime_ns == stamp and said[-1] == f"pretrained backbone: reusing {path}"
    other = PretrainConfig(**{**TINY.__dict__, "seed": 1})
    assert cached_checkpoint_path(other, "resnet18", tmp_path) != path
    assert cached_checkpoint_path(TINY, "resnet50", tmp_path) != path


def test_pretrain_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.pt"
    assert main(["pretrain", "--out", str(out), "--train-images", "16", "--val-images", "10",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "16 images seen (1.0 epochs)" in text and f"model.pretrained_weights: {out}" in text
    assert (tmp_path / "pretrain_data" / "train" / "star").is_dir()
    assert main(["pretrain", "--out", str(out), "--batch-size", "6", "--workers", "4"]) == 2
    assert "batch_size: 6 must be divisible by workers (4)" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(out), "--data", f"imagefolder:{tmp_path / 'nowhere'}"]) == 1
    assert "study: data error: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expected 'synthetic' or 'imagefolder:PATH'"):
        PretrainConfig(data="imagenet")


@pytest.mark.slow
def test_pretrain_on_two_ray_train_workers(tmp_path: Path) -> None:
    """Data-parallel pre-training through Ray Train (gloo on CPU), rank 0's weights returned."""
    import ray

    pcfg = PretrainConfig(**{**TINY.__dict__, "workers": 2})
    try:
        record = run_pretrain(pcfg, backbone="resnet18", out=tmp_path / "ddp.pt",
                            data_dir=tmp_path / "data", progress=lambda _m: None)
    finally:
        ray.shutdown()
    assert record.workers == 2 and record.images_seen == 40 and record.iterations == 5
    assert torch.load(tmp_path / "ddp.pt", weights_only=True)["meta"]["workers"] == 2


def _study(norm: str, pretrain_norm: str | None = None, allow_fresh_norms: bool = False) -> StudyConfig:
    # pre-trained in this process, also for the syncbn study (its trials would need GPUs)
    pretrain = {**{k: v for k, v in TINY.__dict__.items() if k != "norm"}, "gpus_per_worker": 0}
    if pretrain_norm is not None:
        pretrain["norm"] = pretrain_norm
    return study_from_dict({
        "name": "transfer", "model": {"backbone": "resnet18", "norm": norm, "profile": "tiny",
                                      "min_size": 64, "max_size": 64, "allow_fresh_norms": allow_fresh_norms},
        "pretrain": pretrain, "grid": {"init": ["pretrained"]},
        "resources": {"gpus_per_worker": 1 if norm == "syncbn" else 0}})


@pytest.mark.parametrize("norm", ["gn", "bn", "syncbn", "frozen_bn"])
def test_the_pretrained_arm_loads_every_backbone_tensor(norm: str, tmp_path: Path) -> None:
    """A study pre-trains with the norm its detector has, so every tensor of the detector's
    backbone (weights, biases, norm affines, BatchNorm statistics) comes from the checkpoint."""
    cfg = _study(norm)
    assert cfg.pretrain.norm == ("gn" if norm == "gn" else "bn")
    weights = study_weights(cfg, tmp_path)
    detector = build_detector(cfg, num_classes=5)
    body = detector.backbone.body
    report = load_backbone(detector, weights)
    assert report.fresh == [] and not report.note and "0 left fresh" in report.summary()
    state = torch.load(weights, weights_only=True)["backbone"]
    assert set(report.loaded) == set(body.state_dict())
    for key, tensor in body.state_dict().items():
        assert torch.equal(tensor, state[key].to(tensor.dtype)), key


def test_a_mismatched_norm_is_refused_unless_allowed_then_names_every_tensor_left_fresh(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pretrain.norm: 'bn' pre-trains norms the 'gn' detector cannot load"):
        _study("gn", pretrain_norm="bn")
    cfg = _study("gn", pretrain_norm="bn", allow_fresh_norms=True)
    detector = build_detector(cfg, num_classes=5)
    with pytest.raises(FreshNorms, match="its 40 norm tensors would keep their fresh init"):
        load_backbone(detector, study_weights(cfg, tmp_path))
    report = load_backbone(detector, study_weights(cfg, tmp_path), allow_fresh_norms=True)
    body = detector.backbone.body
    norm_tensors = [f"{name}.{k}" for name, m in body.named_modules()
                    if isinstance(m, torch.nn.GroupNorm) for k in m.state_dict()]
    assert len(norm_tensors) == 40 and sorted(report.fresh) == sorted(norm_tensors)
    text = report.summary()
    assert f"{len(body.state_dict()) - 40} tensors loaded, 40 left fresh" in text
    assert all(name in text for name in norm_tensors) and "layer4.1.bn2.bias" in text
    assert torch.all(body.layer4[1].bn2.weight == 1)


def test_pretrain_cli_takes_a_studys_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`study pretrain --study FILE` makes the checkpoint that study's pretrained arm would load:
    its backbone, its norm (here bn, for a BatchNorm detector), its pretrain settings; flags win."""
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nmodel: {backbone: resnet18, norm: bn}\n"
                     "pretrain: {train_images: 20, val_images: 10, image_size: 32, batch_size: 10, epochs: 1}\n")
    out = tmp_path / "s.pt"
    assert main(["pretrain", "--study", str(study), "--out", str(out), "--epochs", "2"]) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert (meta["backbone"], meta["norm"], meta["image_size"], meta["iterations"]) == ("resnet18", "bn", 32, 4)
    assert "40 images seen (2.0 epochs)" in capsys.readouterr().out


def test_pretraining_with_gpus_is_a_ray_train_job_that_asks_for_them(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrain.gpus_per_worker (unset: the study's resources.gpus_per_worker) > 0: a Ray Train
    job, one worker included, with GPUs in its resources; 0 and one worker: this process."""
    import dataclasses

    from study.tune import jobs

    gpu_study = study_from_dict({"name": "g", "resources": {"workers": 8, "gpus_per_worker": 1}})
    assert gpu_study.pretrain.gpus_per_worker == 1.0 and study_from_dict({"name": "c"}).pretrain.gpus_per_worker == 0
    asked: list[dict] = []

    def fake_fit(_worker, _config, **kw):  # what Ray Train would be asked for
        asked.append({k: kw[k] for k in ("workers", "use_gpu", "resources_per_worker")})
        raise RuntimeError("asked")

    monkeypatch.setattr(jobs, "start_ray", lambda **_kw: None)
    monkeypatch.setattr(jobs, "fit_torch", fake_fit)
    with pytest.raises(RuntimeError, match="asked"):
        run_pretrain(dataclasses.replace(TINY, gpus_per_worker=1.0), backbone="resnet18", out=tmp_path / "p.pt",
                     data_dir=tmp_path / "data", progress=lambda _m: None)
    assert asked == [{"workers": 1, "use_gpu": True, "resources_per_worker": {"CPU": 1, "GPU": 1.0}}]
    record = run_pretrain(dataclasses.replace(TINY, gpus_per_worker=0.0), backbone="resnet18", out=tmp_path / "c.pt",
                          data_dir=tmp_path / "data", progress=lambda _m: None)
    assert record.device == "cpu" and len(asked) == 1  # in this process
