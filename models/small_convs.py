"""Convolutions over tiny feature maps on the CPU, computed as unfold + one matmul.

At 64 px a ResNet's layer4 sees 2 x 2 maps: its 3 x 3 convs have 2.4M weights each and almost no
work per weight. oneDNN's convolution spends its time on the weights (reordering them, and bf16
copies of them under autocast), not the arithmetic: measured on one core, a 512 -> 512 conv on a
batch of four 2 x 2 maps took 11.6 ms for forward + backward in fp32 and 13.8 ms under bf16
autocast, against 2.9 ms as `unfold` + matmul in fp32. On maps of 4 x 4 and larger oneDNN is as
fast or faster, so only convs whose output has at most `MAX_POSITIONS` positions per image take
this path, and only on the CPU (cuDNN has no such cliff). The result is the same convolution:
the same parameters, the same state-dict keys, equal outputs to floating-point rounding. A
trial step of the default study's detector takes 0.87x the time with it (bench/suite.py part step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_POSITIONS = 4  # 2 x 2 outputs: where oneDNN was measured slower; on 4 x 4 maps the two tie


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d that computes outputs of at most `MAX_POSITIONS` positions as unfold + matmul,
    in fp32 (autocast off: unfold's backward in bf16 is slower than oneDNN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or self.weight.dtype != torch.float32 or self.groups != 1 or x.dim() != 4
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if out_h * out_w > MAX_POSITIONS:
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            cols = F.unfold(x.float(), self.kernel_size, self.dilation, self.padding, self.stride)
            n, k, positions = cols.shape
            # one matmul over every image's positions (a batched one reads the weights once per image)
            y = self.weight.float().flatten(1) @ cols.transpose(0, 1).reshape(k, n * positions)
            if self.bias is not None:
                y = y + self.bias.float()[:, None]
        return y.view(self.out_channels, n, out_h, out_w).transpose(0, 1).contiguous()


def use_small_map_convs(module: nn.Module) -> nn.Module:
    """Replace every plain nn.Conv2d in `module` by a SmallMapConv2d holding the same parameters
    (so state dicts, optimizers and checkpoints see no change). Returns `module`."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            conv = SmallMapConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, child.bias is not None,
                                  child.padding_mode, device="meta")
            conv.weight = child.weight
            conv.bias = child.bias
            setattr(module, name, conv)
        else:
            use_small_map_convs(child)
    return module
