"""GN ImageNet weights by their real names (Detectron's Caffe2 `.pkl`, timm's `resnet50_gn`),
built here with the real key names and shapes (no download), loaded into the GN detector with
every tensor accounted for; BatchNorm weights into a GN detector refused with their count."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.init import FreshNorms, load_backbone
from models.mask_rcnn import build_mask_rcnn, build_resnet
from models.weight_files import UnsafeCheckpoint, backbone_layout, read_detectron_pkl

BLOCKS_R50 = (3, 4, 6, 3)
NORM_TENSORS_R50_GN = 2 * (1 + 3 * sum(BLOCKS_R50) + 4)  # stem, 3 per block, 4 shortcuts: 106


def gn_detector(backbone: str = "resnet50"):
    torch.manual_seed(0)
    return build_mask_rcnn(backbone=backbone, norm="gn", num_classes=3, profile="tiny", min_size=64, max_size=64)


def detectron_r50_gn_blobs(seed: int = 0) -> dict[str, np.ndarray]:
    """R-50-GN.pkl's blobs: Detectron's names (`conv1_w`, `conv1_gn_s`, `res2_0_branch2a_w`,
    `res2_0_branch1_gn_b`, ..., `pred_w`), its shapes (a ResNet-50's), random values."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {"conv1_w": (64, 3, 7, 7), "conv1_gn_s": (64,), "conv1_gn_b": (64,)}
    inplanes = 64
    for stage, blocks in zip(range(2, 6), BLOCKS_R50):
        width = 64 * 2 ** (stage - 2)
        for b in range(blocks):
            block_in = inplanes if b == 0 else width * 4
            convs = {"2a": (width, block_in, 1, 1), "2b": (width, width, 3, 3), "2c": (width * 4, width, 1, 1)}
            if b == 0:
                convs["1"] = (width * 4, inplanes, 1, 1)
            for branch, shape in convs.items():
                shapes[f"res{stage}_{b}_branch{branch}_w"] = shape
                shapes[f"res{stage}_{b}_branch{branch}_gn_s"] = (shape[0],)
                shapes[f"res{stage}_{b}_branch{branch}_gn_b"] = (shape[0],)
        inplanes = width * 4
    shapes.update(pred_w=(1000, 2048), pred_b=(1000,))
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_pkl(path: Path, obj: object) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # Detectron's files were written by Python 2
    return path


def test_detectrons_r50_gn_pkl_loads_every_tensor(tmp_path: Path) -> None:
    blobs = detectron_r50_gn_blobs()
    assert len(blobs) == 161  # 159 backbone tensors and the classifier
    path = write_pkl(tmp_path / "R-50-GN.pkl", {"blobs": blobs})
    model = gn_detector()
    report = load_backbone(model, path)
    body = model.backbone.body.state_dict()
    assert report.fresh == [] and report.unexpected == [] and sorted(report.loaded) == sorted(body)
    assert len(report.loaded) == 159 and "159 tensors loaded, 0 left fresh, 0 unexpected" in report.summary()
    expect = {"bn1.weight": "conv1_gn_s", "layer1.0.conv1.weight": "res2_0_branch2a_w",
              "layer1.0.bn3.bias": "res2_0_branch2c_gn_b", "layer1.0.downsample.0.weight": "res2_0_branch1_w",
              "layer3.5.bn2.weight": "res4_5_branch2b_gn_s", "layer4.0.downsample.1.bias": "res5_0_branch1_gn_b",
              "layer4.2.conv3.weight": "res5_2_branch2c_w"}
    for key, name in expect.items():
        assert torch.equal(body[key], torch.from_numpy(blobs[name])), key
    # every value equal: each Detectron blob is one detector tensor, conv1 through the input conversion
    mapped = {k for k in body if k != "conv1.weight"}
    assert all(any(torch.equal(body[k], torch.from_numpy(v)) for v in blobs.values()) for k in mapped)
    # conv1 computes on torchvision's input what Detectron's conv1 computes on detectron2's (BGR,
    # 0-255 less ImageNet's mean x 255, no std)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    bgr = torch.from_numpy(blobs["conv1_w"])
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(torch.nn.functional.conv2d((x - mean) / std, body["conv1.weight"], padding=3),
                               torch.nn.functional.conv2d(((x - mean) * 255)[:, [2, 1, 0]], bgr, padding=3),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(body["conv1.weight"], bgr[:, [2, 1, 0]] * 255 * std)


def test_timms_resnet50_gn_loads_every_tensor(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model("resnet50_gn", pretrained=False).state_dict()  # timm's own names and shapes
    assert "layer1.0.bn1.weight" in state and "fc.weight" in state and not any("running" in k for k in state)
    for suffix, save in ((".pth", lambda s, p: torch.save(s, p)), (".safetensors", save_file)):
        path = tmp_path / f"resnet50_gn{suffix}"
        save(state, path)
        model = gn_detector()
        report = load_backbone(model, path)
        body = model.backbone.body.state_dict()
        assert report.fresh == [] and report.unexpected == [] and len(report.loaded) == len(body) == 159
        for key, tensor in body.items():
            assert torch.equal(tensor, state[key]), key


def test_batchnorm_names_into_a_gn_detector_are_refused_with_their_count(tmp_path: Path) -> None:
    torch.manual_seed(2)
    bn = build_resnet("resnet50", "bn")  # torchvision's ResNet-50 names, as ResNet50_Weights files hold
    path = tmp_path / "resnet50_bn.pth"
    torch.save(bn.state_dict(), path)
    model = gn_detector()
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    with pytest.raises(FreshNorms, match=rf"its {NORM_TENSORS_R50_GN} norm tensors would keep their fresh init") as err:
        load_backbone(model, path)
    assert err.value.fresh == NORM_TENSORS_R50_GN and "model.allow_fresh_norms: true" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.body.state_dict().items())  # untouched
    report = load_backbone(model, path, allow_fresh_norms=True)
    assert len(report.fresh) == NORM_TENSORS_R50_GN and f"{NORM_TENSORS_R50_GN} left fresh" in report.summary()
    assert torch.equal(model.backbone.body.layer2[0].conv2.weight, bn.layer2[0].conv2.weight)
    assert torch.all(model.backbone.body.layer2[0].bn2.weight == 1)


def test_a_torchvision_weights_name_is_laid_out_without_a_download() -> None:
    layout = backbone_layout("ResNet50_Weights.IMAGENET1K_V1")
    assert layout["layer1.0.bn1.running_mean"] == torch.Size([64]) and "fc.weight" not in layout
    assert len([k for k in layout if k.endswith("running_var")]) == NORM_TENSORS_R50_GN // 2


def test_a_pkl_with_anything_but_arrays_is_refused(tmp_path: Path) -> None:
    path = write_pkl(tmp_path / "evil.pkl", {"blobs": {"conv1_w": np.zeros(3)}, "x": Path("/")})
    with pytest.raises(UnsafeCheckpoint, match="is not a numpy array"):
        read_detectron_pkl(path)
    bn = write_pkl(tmp_path / "R-50.pkl", {"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                                                      "res_conv1_bn_s": np.ones(64, np.float32)}})
    with pytest.raises(ValueError, match="a Caffe2 BatchNorm ResNet"):
        load_backbone(gn_detector(), bn)
