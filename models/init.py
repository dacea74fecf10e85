"""Initialisation: the one thing in which the study's two arms differ.

- `init_scratch` (both arms): MSRA/He normal init, fan-out, of every conv of the backbone, the
  FPN and the box and mask heads (Detectron's c2_msra_fill); norm weight 1, bias 0. The RPN head
  and the predictors get Detectron's small Gaussians. Call it under a fixed seed: then the two
  arms start with identical heads.
- `load_backbone` (pretrained arm, after `init_scratch`): the backbone's weights from any source
  `models.weight_files` reads (a `study pretrain` checkpoint, torchvision or timm state dicts,
  Detectron's `.pkl`, a torchvision weights name). It reports which tensors were loaded and
  unexpected, and refuses a checkpoint of another architecture. BatchNorm statistics cannot be
  carried into GroupNorm (nor the other way): such a checkpoint is refused with the count of norm
  tensors that would keep their fresh init, unless `allow_fresh_norms` (then the convs load and
  the report names the norms left fresh). A study pre-trains with its detector's kind of norm, so
  that everything loads; `plan_backbone_load` is the same check without the tensors (the
  pre-flight's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from models.norms import NORM_TYPES
from models.weight_files import read_backbone_state


def msra_fill_(module: nn.Module) -> None:
    """MSRA (He) normal init, fan-out, of every conv in `module`; norm affine 1 / 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, FrozenBatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.running_mean.zero_()
            m.running_var.fill_(1.0)


@torch.no_grad()
def init_scratch(model: MaskRCNN) -> None:
    """Random init of the whole detector (see the module docstring); nothing is frozen."""
    msra_fill_(model.backbone)
    msra_fill_(model.roi_heads.box_head)
    msra_fill_(model.roi_heads.mask_head)
    msra_fill_(model.roi_heads.mask_predictor)
    for layer in model.rpn.head.modules():  # Detectron: RPN convs N(0, 0.01)
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
    predictor = model.roi_heads.box_predictor  # Detectron: cls N(0, 0.01), box N(0, 0.001)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    for p in model.parameters():
        p.requires_grad_(True)


class BackboneMismatch(ValueError):
    """A checkpoint whose backbone is not the model's (other depth, width or layout)."""


class FreshNorms(BackboneMismatch):
    """A checkpoint of the other norm kind (BatchNorm into GroupNorm, or back): `fresh` norm
    tensors would keep their init unless the study allows it (model.allow_fresh_norms)."""

    def __init__(self, message: str, fresh: int):
        super().__init__(message)
        self.fresh = fresh


@dataclass
class LoadReport:
    """What `load_backbone` did, tensor by tensor."""

    source: str
    loaded: list[str] = field(default_factory=list)
    norms_not_loaded: list[str] = field(default_factory=list)  # BN <-> GN: fresh init kept
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def fresh(self) -> list[str]:
        """The backbone tensors that kept their fresh init (named; empty when all loaded)."""
        return list(self.norms_not_loaded)

    def summary(self) -> str:
        text = (f"pretrained backbone from {self.source}: {len(self.loaded)} tensors loaded, "
                f"{len(self.fresh)} left fresh, {len(self.unexpected)} unexpected ignored")
        if self.note:
            text += f"\n  {self.note}"
        if self.fresh:
            text += "\n  left fresh: " + ", ".join(self.fresh)
        return text


def _norm_modules(body: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in body.named_modules() if isinstance(m, NORM_TYPES)}


def plan_backbone_load(body: nn.Module, shapes: dict[str, torch.Size], *, source: str,
                       allow_fresh_norms: bool = False) -> LoadReport:
    """What loading a checkpoint of these tensor `shapes` into `body` would do, tensor by tensor.

    Raises BackboneMismatch when a conv or shape differs, and FreshNorms when the norm kinds
    differ (BatchNorm statistics cannot become GroupNorm, nor the other way: the norm tensors
    would keep their fresh init, which handicaps the pretrained arm) unless `allow_fresh_norms`,
    when the convs load and the report names the norms left fresh."""
    target = body.state_dict()
    report = LoadReport(source=source)
    norms = _norm_modules(body)
    norm_of = {f"{n}.{k}": n for n, m in norms.items() for k in m.state_dict()}
    model_has_stats = any(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))
                          for m in norms.values())
    ckpt_has_stats = any(k.endswith("running_mean") for k in shapes)

    problems = []
    for key, tensor in target.items():
        if key in norm_of:
            continue
        if key not in shapes:
            problems.append(f"{key}: missing from the checkpoint")
        elif shapes[key] != tensor.shape:
            problems.append(f"{key}: checkpoint {list(shapes[key])}, model {list(tensor.shape)}")
    foreign = [k for k in shapes if k not in target and not k.endswith("num_batches_tracked")
               and k.rsplit(".", 1)[0] not in norms]
    problems += [f"{k}: in the checkpoint, not in the model" for k in foreign
                 if not k.rsplit(".", 1)[-1].startswith("running_")]
    if problems:
        raise BackboneMismatch(f"{source} does not fit this backbone ({len(problems)} mismatches):\n  "
                               + "\n  ".join(problems[:12]))

    norms_match = model_has_stats == ckpt_has_stats
    for key, tensor in target.items():
        if key in norm_of and not norms_match:
            report.norms_not_loaded.append(key)
        elif key in shapes and shapes[key] == tensor.shape:
            report.loaded.append(key)
        elif key in norm_of:
            report.norms_not_loaded.append(key)  # e.g. num_batches_tracked absent from FrozenBN
    report.unexpected = [k for k in shapes if k not in target]
    if not norms_match:
        have = "BatchNorm statistics" if ckpt_has_stats else "no BatchNorm statistics (GroupNorm)"
        want = "BatchNorm" if model_has_stats else "GroupNorm"
        fresh = len(report.norms_not_loaded)
        if not allow_fresh_norms:
            examples = ("Detectron's R-50-GN.pkl / R-101-GN.pkl, timm's resnet50_gn" if want == "GroupNorm"
                        else "a torchvision weights name such as ResNet50_Weights.IMAGENET1K_V1")
            raise FreshNorms(
                f"{source}: the checkpoint has {have}, the detector uses {want}: its {fresh} norm tensors "
                "would keep their fresh init (weight 1, bias 0), a handicap for the pretrained arm. Give "
                f"weights pre-trained with {want} ({examples}), or set model.allow_fresh_norms: true "
                "to load the convs only", fresh)
        report.note = (f"norm mismatch: the checkpoint has {have}, the model uses {want}; conv "
                       f"weights were loaded, the {fresh} norm tensors keep their fresh init (weight 1, "
                       "bias 0; model.allow_fresh_norms)")
    return report


@torch.no_grad()
def load_backbone(model: MaskRCNN, source: str | Path, *, allow_fresh_norms: bool = False) -> LoadReport:
    """Load a pretrained backbone into `model.backbone.body`; FPN and heads are left as they are.
    See `plan_backbone_load` for what is refused."""
    state, meta = read_backbone_state(source)
    body = model.backbone.body
    target = body.state_dict()
    report = plan_backbone_load(body, {k: v.shape for k, v in state.items()}, source=str(source),
                                allow_fresh_norms=allow_fresh_norms)
    report.meta = meta
    body.load_state_dict({**target, **{k: state[k].to(target[k].dtype) for k in report.loaded}})
    return report
