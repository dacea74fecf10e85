from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from models.choices import NORMS, PROFILES
from models.classifier import backbone_state, build_classifier
from models.init import init_scratch, load_backbone
from models.mask_rcnn import DETECTOR_PROFILES, build_mask_rcnn
from models.norms import NORM_TYPES, convert_sync_batchnorm, get_norm, gn_groups, parameter_groups

SMALL_BACKBONES = ("resnet18", "resnet50")


def tiny_model(backbone: str = "resnet18", norm: str = "gn", seed: int = 0):
    torch.manual_seed(seed)
    model = build_mask_rcnn(backbone=backbone, norm=norm, num_classes=3, profile="tiny",
                            min_size=64, max_size=64)
    init_scratch(model)
    return model


def tiny_batch(n: int = 2, empty: bool = False):
    images = [torch.rand(3, 64, 48) for _ in range(n)]
    targets = []
    for _ in range(n):
        if empty:
            targets.append({"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                            "masks": torch.zeros((0, 64, 48), dtype=torch.uint8)})
            continue
        masks = torch.zeros((2, 64, 48), dtype=torch.uint8)
        masks[0, 8:30, 6:26] = 1
        masks[1, 30:60, 20:44] = 1
        targets.append({"boxes": torch.tensor([[6.0, 8, 26, 30], [20, 30, 44, 60]]),
                        "labels": torch.tensor([1, 3]), "masks": masks})
    return images, targets


def _checkpoint(tmp_path: Path, backbone: str, norm: str, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    classifier = build_classifier(backbone=backbone, norm=norm, num_classes=7)
    path = tmp_path / f"{backbone}_{norm}_{seed}.pt"
    torch.save({"backbone": backbone_state(classifier), "meta": {"images_seen": 123}}, path)
    return path


def test_profiles_cover_the_choices() -> None:
    assert set(DETECTOR_PROFILES) == set(PROFILES)


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("init", ["scratch", "pretrained"])
def test_every_combination_trains_one_step(backbone: str, norm: str, init: str, tmp_path: Path) -> None:
    model = tiny_model(backbone, norm)
    if init == "pretrained":
        report = load_backbone(model, _checkpoint(tmp_path, backbone, norm))
        assert len(report.loaded) == len(model.backbone.body.state_dict()) and not report.note
    model.train()
    losses = model(*tiny_batch())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if norm == "syncbn":  # built as BatchNorm; the trainer converts it on GPUs only
        with pytest.raises(ValueError, match="norm 'syncbn' needs CUDA devices"):
            convert_sync_batchnorm(model, norm, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 48)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


@pytest.mark.parametrize("norm", NORMS)
def test_empty_roi_batches_do_not_crash(norm: str) -> None:
    model = tiny_model("resnet18", norm)
    model.train()
    losses = model(*tiny_batch(empty=True))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0


# The frozen-parameter table: nothing is frozen in any configuration, in either arm (the paper
# fine-tunes everything). Trainable norm tensors: 2 per norm layer, none for frozen_bn (whose
# affine is a buffer by design).
FROZEN_TABLE = [(b, n, i) for b in SMALL_BACKBONES for n in NORMS for i in ("scratch", "pretrained")]


@pytest.mark.parametrize("backbone,norm,init", FROZEN_TABLE)
def test_frozen_parameter_table(backbone: str, norm: str, init: str, tmp_path: Path) -> None:
    model = tiny_model(backbone, norm)
    if init == "pretrained":
        load_backbone(model, _checkpoint(tmp_path, backbone, norm))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == []
    norm_layers = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    trainable_norm = sum(1 for m in norm_layers for p in m.parameters(recurse=False) if p.requires_grad)
    frozen_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in norm_layers)
    # stem 1 + blocks (2 or 3 norms each) + downsample 3 + FPN 8 + box head 4 + mask head 4
    blocks = {"resnet18": 8 * 2, "resnet50": 16 * 3}[backbone]
    assert len(norm_layers) == 1 + blocks + (3 if backbone == "resnet18" else 4) + 8 + 4 + 4
    if norm == "frozen_bn":
        assert trainable_norm == 0 and frozen_bn == len(norm_layers)  # FPN and heads too
    else:
        assert trainable_norm == 2 * len(norm_layers) and frozen_bn == 0


def test_scratch_init_is_msra_fan_out() -> None:
    model = tiny_model("resnet50", "gn")
    for name, conv in [("layer3.0.conv2", model.backbone.body.layer3[0].conv2),
                       ("fpn.layer_blocks.0", model.backbone.fpn.layer_blocks[0][0]),
                       ("box_head conv", model.roi_heads.box_head[0][0])]:
        w = conv.weight
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05), name
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2 / fan_out), name
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            assert m.num_groups == gn_groups(m.num_channels)
    assert model.roi_heads.box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)


def test_pretrained_loading_changes_exactly_the_backbone(tmp_path: Path) -> None:
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    ckpt = _checkpoint(tmp_path, "resnet18", "gn", seed=5)
    report = load_backbone(a, ckpt)
    state = torch.load(ckpt, weights_only=True)["backbone"]
    body_keys = {f"backbone.body.{k}" for k in a.backbone.body.state_dict()}
    assert set(report.loaded) == set(a.backbone.body.state_dict()) == set(state)
    assert report.meta == {"images_seen": 123} and not report.note and not report.unexpected
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if key in body_keys:
            assert torch.equal(sa[key], state[key.removeprefix("backbone.body.")]), key
            assert not torch.equal(sa[key], sb[key]) or sa[key].unique().numel() == 1, key
        else:
            assert torch.equal(sa[key], sb[key]), f"{key} changed, but is not in the backbone"


def test_a_detectors_weights_give_their_backbone(tmp_path: Path) -> None:
    donor, model = tiny_model(seed=7), tiny_model(seed=0)
    path = tmp_path / "detector.pt"
    torch.save({"model": donor.state_dict()}, path)
    report = load_backbone(model, path)
    assert set(report.loaded) == set(model.backbone.body.state_dict()) and not report.unexpected
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, donor.backbone.body.layer3[1].conv2.weight)
    assert not torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, donor.backbone.fpn.layer_blocks[0][0].weight)


def test_a_mismatched_checkpoint_fails_naming_the_mismatch(tmp_path: Path) -> None:
    model = tiny_model("resnet50", "gn")
    with pytest.raises(ValueError, match=r"does not fit this backbone .*\n  layer1.0.conv1.weight: "
                                         r"checkpoint \[64, 64, 3, 3\], model \[64, 64, 1, 1\]"):
        load_backbone(model, _checkpoint(tmp_path, "resnet18", "gn"))
    with pytest.raises(FileNotFoundError, match="no such file, and not a torchvision weights name"):
        load_backbone(model, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="not a torchvision weights name"):
        load_backbone(model, "ResNet50_Weights.NO_SUCH_WEIGHTS")


def test_batchnorm_weights_into_groupnorm_load_convs_only_when_allowed(tmp_path: Path) -> None:
    """A torchvision-format ImageNet file (BN, with fc and a DDP prefix) into a GN detector."""
    torch.manual_seed(3)
    bn_classifier = build_classifier(backbone="resnet18", norm="bn", num_classes=1000)
    path = tmp_path / "resnet18_bn.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in bn_classifier.state_dict().items()}}, path)
    model = tiny_model("resnet18", "gn")
    report = load_backbone(model, path, allow_fresh_norms=True)  # refused without (test_weight_files.py)
    assert "norm mismatch: the checkpoint has BatchNorm statistics, the model uses GroupNorm" in report.note
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, bn_classifier.layer2[0].conv1.weight)
    assert torch.all(body.bn1.weight == 1) and torch.all(body.layer2[0].bn1.bias == 0)
    assert len(report.norms_not_loaded) == 2 * 20 and "bn1.weight" in report.norms_not_loaded
    assert any(k.endswith("running_mean") for k in report.unexpected)
    # and into a BN detector everything loads, statistics included
    bn_model = tiny_model("resnet18", "bn")
    report = load_backbone(bn_model, path)
    assert not report.note and not report.norms_not_loaded
    assert torch.equal(bn_model.backbone.body.bn1.running_var, bn_classifier.bn1.running_var)


def test_parameter_groups_put_norms_at_zero_decay() -> None:
    model = tiny_model("resnet18", "gn")
    groups = parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == norm_ids


def test_norm_table() -> None:
    assert isinstance(get_norm("gn", 256), nn.GroupNorm) and get_norm("gn", 256).num_groups == 32
    assert get_norm("gn", 48).num_groups == 16  # 32 does not divide 48
    assert type(get_norm("syncbn", 64)) is nn.BatchNorm2d and type(get_norm("bn", 64)) is nn.BatchNorm2d
    assert isinstance(get_norm("frozen_bn", 64), FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="unknown norm 'ln'; allowed: gn, syncbn, bn, frozen_bn"):
        get_norm("ln", 64)
    layer = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(layer, "bn", torch.device("cpu")) is layer


def test_under_bf16_autocast_boxes_are_decoded_in_fp32() -> None:
    """The heads compute in bf16 but hand fp32 on: proposals and detections are not rounded to bf16."""
    model = tiny_model()
    model.eval()
    proposals: list[torch.Tensor] = []
    model.roi_heads.register_forward_pre_hook(lambda _m, args: proposals.extend(args[1]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([torch.rand(3, 64, 48)])[0]
        rpn_logits, rpn_deltas = model.rpn.head([torch.rand(1, 64, 16, 12)])
    assert rpn_logits[0].dtype == rpn_deltas[0].dtype == torch.float32
    assert proposals and all(p.dtype == torch.float32 for p in proposals)
    assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == torch.float32
    assert len(out["boxes"]) > 0
    # an untrained model's proposals land anywhere in the image: rounded to bf16 (steps of 0.125-0.25
    # px above 16 px) nearly all of them would sit on that grid
    coords = torch.cat(proposals).flatten()
    off_grid = (coords[coords > 16] * 8).frac() != 0
    assert off_grid.float().mean() > 0.5
