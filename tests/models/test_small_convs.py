from __future__ import annotations

import pytest
import torch
from torch import nn

from models.mask_rcnn import build_backbone_fpn
from models.small_convs import MAX_POSITIONS, SmallMapConv2d, use_small_map_convs


def _pair(conv_args: dict, seed: int = 0) -> tuple[nn.Conv2d, SmallMapConv2d]:
    torch.manual_seed(seed)
    plain = nn.Conv2d(**conv_args)
    small = use_small_map_convs(nn.Sequential(plain))[0]
    return plain, small


CASES = [  # (conv, input shape): layer4's 3x3 on 2x2 maps, its stride-2 entry, a 1x1 with bias, a 1x1 map
    ({"in_channels": 16, "out_channels": 24, "kernel_size": 3, "padding": 1, "bias": False}, (3, 16, 2, 2)),
    ({"in_channels": 16, "out_channels": 24, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
     (2, 16, 4, 4)),
    ({"in_channels": 16, "out_channels": 8, "kernel_size": 1, "bias": True}, (2, 16, 2, 2)),
    ({"in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": True}, (5, 8, 1, 1)),
]


@pytest.mark.parametrize("conv_args,shape", CASES)
def test_a_small_map_conv_equals_the_convolution_forward_and_backward(conv_args, shape) -> None:
    plain, small = _pair(conv_args)
    assert small.weight is plain.weight and small.bias is plain.bias  # the same parameters, shared
    x = torch.randn(*shape)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1), small(x2)
    assert y2.shape == y1.shape and y2.is_contiguous()
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y1)
    w1 = torch.autograd.grad(y1, [x1, plain.weight], grad)
    w2 = torch.autograd.grad(y2, [x2, small.weight], grad)
    for a, b in zip(w2, w1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_it_computes_in_fp32() -> None:
    plain, small = _pair(CASES[0][0])
    x = torch.randn(*CASES[0][1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = small(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)


def test_larger_maps_take_the_ordinary_convolution(monkeypatch) -> None:
    plain, small = _pair(CASES[0][0])
    x = torch.randn(2, 16, 3, 3)  # 9 output positions > MAX_POSITIONS
    assert 9 > MAX_POSITIONS
    calls = []
    monkeypatch.setattr(torch.nn.functional, "unfold", lambda *a, **k: calls.append(a) or None)
    assert torch.equal(small(x), plain(x)) and not calls


def test_the_backbone_converts_every_plain_conv_and_computes_the_same_features(monkeypatch) -> None:
    import models.small_convs

    torch.manual_seed(0)
    fpn = build_backbone_fpn("resnet18", "gn", 64)
    convs = [m for m in fpn.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is SmallMapConv2d for m in convs)
    assert "body.layer4.1.conv2.weight" in fpn.state_dict()  # torchvision's names (load_backbone relies on them)
    x = torch.rand(2, 3, 64, 64)  # layer4 and P5 at 2 x 2: the unfold path
    small = fpn(x)
    monkeypatch.setattr(models.small_convs, "MAX_POSITIONS", 0)  # every conv through oneDNN
    ordinary = fpn(x)
    assert small["3"].shape[-2:] == (2, 2)
    for key in ordinary:
        torch.testing.assert_close(small[key], ordinary[key], rtol=1e-4, atol=1e-4)
