"""The paper's normalisations, chosen from a small table: gn | syncbn | bn | frozen_bn.

- gn: GroupNorm with 32 groups (Wu & He 2018; the paper's main setting).
- syncbn: BatchNorm2d layers that the trainer converts to SyncBatchNorm (statistics over all
  GPUs) before wrapping in DDP; SyncBatchNorm does not run on CPU tensors, so this is refused
  for CPU runs (PyTorch's SyncBatchNorm supports only CUDA tensors).
- bn: per-replica BatchNorm (what breaks scratch training at 2 images per GPU, paper §3.1).
- frozen_bn: fixed affine statistics (torchvision's default for pretrained backbones); with a
  random-init backbone it disables normalisation altogether, one of the known pitfalls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from models.choices import NORMS

GN_GROUPS = 32

# Layers whose parameters are normalisation parameters (no weight decay, Detectron's rule).
NORM_TYPES = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, FrozenBatchNorm2d)


def gn_groups(channels: int) -> int:
    """32 groups; a layer whose channel count 32 does not divide gets gcd(32, channels) groups
    (none in ResNet/FPN at the paper's widths; possible in narrow tiny-profile heads)."""
    return GN_GROUPS if channels % GN_GROUPS == 0 else math.gcd(GN_GROUPS, channels)


def get_norm(norm: str, channels: int) -> nn.Module:
    """One normalisation layer over `channels` channels."""
    if norm == "gn":
        return nn.GroupNorm(gn_groups(channels), channels)
    elif norm in ("bn", "syncbn"):
        return nn.BatchNorm2d(channels)
    elif norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    else:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """`get_norm` with the kind fixed, as torchvision's `norm_layer` arguments want."""
    get_norm(norm, GN_GROUPS)  # fail early on an unknown name

    def make(channels: int) -> nn.Module:
        return get_norm(norm, channels)

    return make


def convert_sync_batchnorm(model: nn.Module, norm: str, device: torch.device) -> nn.Module:
    """For norm 'syncbn': BatchNorm -> SyncBatchNorm, before DDP. Refused off the GPU."""
    if norm != "syncbn":
        return model
    if device.type != "cuda":
        raise ValueError("norm 'syncbn' needs CUDA devices: SyncBatchNorm does not run on CPU "
                         f"tensors (got device {device.type!r}); use norm 'gn' for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def parameter_groups(model: nn.Module, *, weight_decay: float, weight_decay_norm: float
                     ) -> list[dict]:
    """SGD parameter groups: norm parameters get `weight_decay_norm` (0: Detectron's rule)."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in norm_params], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in norm_params], "weight_decay": weight_decay_norm},
    ]
