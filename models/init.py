"""Initialisation: the one thing in which the study's two arms differ.

- `init_scratch` (both arms): MSRA/He normal init, fan-out, of every conv of the backbone, the
  FPN and the box and mask heads (Detectron's c2_msra_fill); norm weight 1, bias 0. The RPN head
  and the predictors get Detectron's small Gaussians. Call it under a fixed seed: then the two
  arms start with identical heads.
- `load_backbone` (pretrained arm, after `init_scratch`): the backbone's weights from a
  `study pretrain` checkpoint, a state-dict file, or a torchvision weights name such as
  'ResNet50_Weights.IMAGENET1K_V2' (downloaded only then, into torch's cache). It reports which
  tensors were loaded and unexpected, names every backbone tensor left fresh, and refuses a
  checkpoint of another architecture. BatchNorm statistics cannot be carried into GroupNorm (nor
  the other way): then the convs load, the norms keep their fresh init, and the report names
  them. A study pre-trains with its detector's kind of norm, so that everything loads.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from models.norms import NORM_TYPES


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


class UnsafeCheckpoint(ValueError):
    """A checkpoint or weight file that holds pickled Python objects besides tensors."""


def load_state_file(path: str | Path) -> Any:
    """Every checkpoint and weight file of the project is read through this: `torch.load` with
    `weights_only=True`, so only tensors, numbers, strings and containers come back. A file with
    pickled Python objects in it (which could run code while loading) is refused, named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise UnsafeCheckpoint(f"{path}: refused: it holds pickled Python objects, not only tensors "
                               f"(files are loaded with torch.load(weights_only=True); {reason})") from None


class BackboneMismatch(ValueError):
    """A checkpoint whose backbone is not the model's (other depth, width or layout)."""


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


_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")


def read_backbone_state(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(backbone state dict with torchvision ResNet key names, metadata) from a weights source."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        obj = load_state_file(path)
        meta: dict[str, Any] = {}
        if isinstance(obj, dict) and "backbone" in obj and isinstance(obj["backbone"], dict):
            state, meta = obj["backbone"], dict(obj.get("meta", {}))  # a `study pretrain` checkpoint
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            state = obj["state_dict"]
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            state = obj["model"]
        elif isinstance(obj, dict):
            state = obj
        else:
            raise BackboneMismatch(f"{path} holds a {type(obj).__name__}, not a state dict")
    elif _WEIGHTS_NAME.match(text):
        from torchvision.models import get_weight

        try:
            weights = get_weight(text)
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{text!r} is not a torchvision weights name ({e})") from None
        state, meta = weights.get_state_dict(progress=True), {"torchvision_weights": text}
    else:
        raise FileNotFoundError(f"pretrained weights {text!r}: no such file, and not a torchvision "
                                "weights name like 'ResNet50_Weights.IMAGENET1K_V2'")
    if any(k.startswith(("backbone.body.", "module.backbone.body.")) for k in state):
        # a whole detector's weights: its backbone is what a pretrained arm takes
        state = {k: v for k, v in state.items() if ".body." in k and "backbone." in k}
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.body.", "body."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("fc."):  # the classifier's head never goes into a detector
            clean[key] = value
    return clean, meta


def _norm_modules(body: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in body.named_modules() if isinstance(m, NORM_TYPES)}


@torch.no_grad()
def load_backbone(model: MaskRCNN, source: str | Path) -> LoadReport:
    """Load a pretrained backbone into `model.backbone.body`; FPN and heads are left as they are."""
    state, meta = read_backbone_state(source)
    body = model.backbone.body
    target = body.state_dict()
    report = LoadReport(source=str(source), meta=meta)
    norms = _norm_modules(body)
    norm_of = {f"{n}.{k}": n for n, m in norms.items() for k in m.state_dict()}
    model_has_stats = any(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))
                          for m in norms.values())
    ckpt_has_stats = any(k.endswith("running_mean") for k in state)

    problems = []
    for key, tensor in target.items():
        if key in norm_of:
            continue
        if key not in state:
            problems.append(f"{key}: missing from the checkpoint")
        elif state[key].shape != tensor.shape:
            problems.append(f"{key}: checkpoint {list(state[key].shape)}, model {list(tensor.shape)}")
    foreign = [k for k in state if k not in target and not k.endswith("num_batches_tracked")
               and k.rsplit(".", 1)[0] not in norms]
    problems += [f"{k}: in the checkpoint, not in the model" for k in foreign
                 if not k.rsplit(".", 1)[-1].startswith("running_")]
    if problems:
        raise BackboneMismatch(f"{source} does not fit this backbone ({len(problems)} mismatches):\n  "
                               + "\n  ".join(problems[:12]))

    norms_match = model_has_stats == ckpt_has_stats
    new_state = {}
    for key, tensor in target.items():
        if key in norm_of and not norms_match:
            report.norms_not_loaded.append(key)
        elif key in state and state[key].shape == tensor.shape:
            new_state[key] = state[key].to(tensor.dtype)
            report.loaded.append(key)
        elif key in norm_of:
            report.norms_not_loaded.append(key)  # e.g. num_batches_tracked absent from FrozenBN
    report.unexpected = [k for k in state if k not in target]
    if not norms_match:
        have = "BatchNorm statistics" if ckpt_has_stats else "no BatchNorm statistics (GroupNorm)"
        want = "BatchNorm" if model_has_stats else "GroupNorm"
        report.note = (f"norm mismatch: the checkpoint has {have}, the model uses {want}; conv "
                       f"weights were loaded, the {len(report.norms_not_loaded)} norm tensors keep "
                       "their fresh init (weight 1, bias 0)")
    body.load_state_dict({**target, **new_state})
    return report
