from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from models.mask_rcnn import build_mask_rcnn
from models.roi_align import MatmulMultiScaleRoIAlign, bilinear_weights, roi_align_matmul


def _rois(n: int, images: int, extent: float, seed: int = 0) -> torch.Tensor:
    """Boxes that reach past every edge of the map (and some wholly outside it), a few thinner
    than one map pixel, on `images` images in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (extent + 16) - 12
    wh = torch.rand(n, 2, generator=g) * extent * 0.7
    wh[: n // 8] *= 0.02
    index = torch.randint(0, images, (n, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], 1)


@pytest.mark.parametrize("output_size,sampling_ratio,scale", [((7, 7), 1, 0.25), ((14, 14), 1, 0.25),
                                                               ((7, 5), 2, 0.5), ((4, 4), 3, 1.0)])
def test_roi_align_matmul_equals_torchvision_forward_and_backward(output_size, sampling_ratio, scale) -> None:
    features = torch.randn(3, 8, 13, 11, generator=torch.Generator().manual_seed(1))
    rois = _rois(60, 3, extent=12 / scale)
    a, b = features.clone().requires_grad_(), features.clone().requires_grad_()
    expected = roi_align(a, rois, output_size, scale, sampling_ratio, aligned=False)
    got = roi_align_matmul(b, rois, output_size, scale, sampling_ratio)
    assert got.shape == expected.shape == (60, 8, *output_size)
    assert expected.abs().sum() > 0 and (expected == 0).all(dim=(1, 2, 3)).any()  # some RoIs wholly outside
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    (ga,) = torch.autograd.grad(expected, a, grad)
    (gb,) = torch.autograd.grad(got, b, grad)
    torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_it_computes_in_fp32_and_hands_on_the_features_dtype() -> None:
    features = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(4)).bfloat16()
    rois = _rois(20, 2, extent=10)
    a, b = features.clone().requires_grad_(), features.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = roi_align(a, rois, (7, 7), 1.0, 1, aligned=False)
        got = roi_align_matmul(b, rois, (7, 7), 1.0, 1)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    (ga,) = torch.autograd.grad(expected, a, grad)
    (gb,) = torch.autograd.grad(got, b, grad)
    assert gb.dtype == torch.bfloat16
    torch.testing.assert_close(gb, ga, rtol=2e-2, atol=2e-2)


def test_bilinear_weights_rows_are_the_average_of_the_bins_samples() -> None:
    # one RoI from 1.0 to 5.0 on a 6-pixel axis, 2 bins of 2 samples: samples at 1.5, 2.5 | 3.5, 4.5
    w = bilinear_weights(torch.tensor([1.0]), torch.tensor([4.0]), bins=2, samples=2, size=6)
    expected = torch.tensor([[[0, 0.25, 0.5, 0.25, 0, 0], [0, 0, 0, 0.25, 0.5, 0.25]]])
    torch.testing.assert_close(w, expected)
    # a sample past the last pixel but within one pixel of it takes the last pixel; beyond, nothing
    w = bilinear_weights(torch.tensor([5.5, 7.5]), torch.tensor([0.0, 0.0]), bins=1, samples=1, size=6)
    torch.testing.assert_close(w, torch.tensor([[[0, 0, 0, 0, 0, 1.0]], [[0, 0, 0, 0, 0, 0]]]))


def test_sampling_ratio_must_be_fixed() -> None:
    with pytest.raises(ValueError, match="adaptive"):
        roi_align_matmul(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2), 1.0, 0)


def _levels(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(2, 4, 512 // s, 384 // s, generator=g))
                       for name, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32)))


def test_the_multiscale_pooler_equals_torchvisions_across_levels() -> None:
    features = _levels()
    boxes = [_rois(40, 1, extent=560, seed=s)[:, 1:].clamp(min=0) for s in (2, 3)]  # 512 x 384 images
    for b in boxes:
        b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 1)
    ours = MatmulMultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    theirs = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    a = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
    b = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
    expected = theirs(a, boxes, [(512, 384)] * 2)
    got = ours(b, boxes, [(512, 384)] * 2)
    assert set(theirs.map_levels(boxes).tolist()) == {0, 1, 2}  # the boxes use three levels
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    ga = torch.autograd.grad(expected, list(a.values())[:3], grad)
    gb = torch.autograd.grad(got, list(b.values())[:3], grad)
    for x, y in zip(gb, ga):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert ours(b, [torch.zeros(0, 4)] * 2, [(512, 384)] * 2).shape == (0, 4, 7, 7)


def test_the_detector_pools_with_it_and_keeps_its_state_dict_keys() -> None:
    model = build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=2, profile="tiny", min_size=64, max_size=64)
    assert type(model.roi_heads.box_roi_pool) is MatmulMultiScaleRoIAlign
    assert type(model.roi_heads.mask_roi_pool) is MatmulMultiScaleRoIAlign
    assert not any("roi_pool" in k for k in model.state_dict())
