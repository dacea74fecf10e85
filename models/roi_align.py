"""RoIAlign's backward on the CPU as matrix products, for a fixed sampling ratio.

With a fixed number of samples per bin side, RoIAlign's bilinear sampling is separable: an output
bin is a weighted sum over the feature map's rows times a weighted sum over its columns, so

    out[r, c] = Ay[r] @ feature[image(r), c] @ Ax[r]^T

where Ay[r] (output rows x map rows) and Ax[r] (output columns x map columns) hold the bilinear
weights of RoI r's sample points, averaged over the samples of each bin, placed and clamped as
torchvision places them (`aligned=False`, as Mask R-CNN uses it). The forward stays torchvision's
kernel; the backward, where torchvision's CPU kernel scatters one bilinear weight at a time, is
grad_feature[b] = sum over b's RoIs of Ay[r]^T @ grad_out[r] @ Ax[r]: matrix products. The
gradients equal torchvision's to floating-point rounding (tests/models/test_roi_align.py).
Measured on one core of a 2-core AMD EPYC (fp32), forward + backward from a 64-channel 16 x 16
map of 4 images: 128 RoIs to 7 x 7 (the tiny profile's box head) 5.8 ms against 17.6 ms, 30 RoIs
to 14 x 14 (its mask head) 3.5 ms against 15.8 ms; bench/suite.py part step has the effect on a
whole training step.

`MatmulMultiScaleRoIAlign` is torchvision's `MultiScaleRoIAlign` (the same FPN level for each box,
the same scales) with this RoIAlign on the CPU; on other devices, or with an adaptive sampling
ratio (<= 0), it is torchvision's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def bilinear_weights(start: Tensor, length: Tensor, bins: int, samples: int, size: int) -> Tensor:
    """(R, bins, size): for each RoI (start and length along one axis, in map pixels), the weight
    of each map pixel in each output bin, averaged over the bin's `samples` sample points, as
    torchvision's RoIAlign places and interpolates them (`aligned=False`)."""
    bin_size = length.clamp(min=1.0) / bins
    steps = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    offsets = torch.arange(samples, dtype=start.dtype, device=start.device)[None, None, :] + 0.5
    bin_size = bin_size[:, None, None]
    # in torchvision's order of operations: start + bin * bin_size + (sample + 0.5) * bin_size / samples
    at = start[:, None, None] + steps * bin_size + offsets * bin_size / samples  # (R, bins, samples)
    inside = ((at >= -1.0) & (at <= size)).to(start.dtype)
    at = at.clamp(min=0.0)
    low = at.floor()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    at = torch.where(edge, low, at)
    high = torch.where(edge, low, low + 1)
    frac = at - low
    weights = torch.zeros(start.shape[0], bins, size, dtype=start.dtype, device=start.device)
    weights.scatter_add_(2, low.long(), (1.0 - frac) * inside / samples)
    weights.scatter_add_(2, high.long(), frac * inside / samples)
    return weights


def roi_align_matmul(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int) -> Tensor:
    """torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned=False) for `sampling_ratio` > 0, with its backward as matrix products. Both directions
    compute in fp32 (as torchvision's autocast rule for RoIAlign does) and hand on `features`'
    dtype. `rois`: (R, 5) rows of (image index, x1, y1, x2, y2); no gradient flows to them (nor
    does it in torchvision's)."""
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio {sampling_ratio} must be > 0 (adaptive sampling is torchvision's)")
    return _RoIAlign.apply(features, rois, tuple(output_size), spatial_scale, sampling_ratio)


class _RoIAlign(torch.autograd.Function):
    """Forward: torchvision's kernel (one pass over the sample points is already cheap). Backward:
    grad_features[b] = sum over b's RoIs r of Ay[r]^T @ grad_out[r] @ Ax[r]: a batched product
    with each RoI's Ax, then one matrix product over every (RoI, output row) at once."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int) -> Tensor:
        with torch.autocast(features.device.type, enabled=False):
            out = roi_align(features.float(), rois.float(), output_size, spatial_scale, sampling_ratio,
                            aligned=False)
        ctx.save_for_backward(rois)
        ctx.shape, ctx.dtype = features.shape, features.dtype
        ctx.spatial_scale, ctx.sampling_ratio = spatial_scale, sampling_ratio
        return out.to(features.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (rois,) = ctx.saved_tensors
        batch, _, height, width = ctx.shape
        _, _, out_h, out_w = grad_out.shape
        with torch.autocast(grad_out.device.type, enabled=False):
            boxes = rois[:, 1:].float() * ctx.spatial_scale
            rows = bilinear_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], out_h, ctx.sampling_ratio, height)
            cols = bilinear_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], out_w, ctx.sampling_ratio, width)
            n, channels = grad_out.shape[:2]
            # sum over each bin's columns: (R, C, out_h, W) -> rows of (RoI, bin row) x (C, W)
            per_row = (grad_out.float() @ cols[:, None]).transpose(1, 2).reshape(n * out_h, channels * width)
            # each RoI's row weights placed in its image's block: (R * out_h, B * H)
            image = torch.nn.functional.one_hot(rois[:, 0].long(), batch).float()
            rows_in_image = (rows[:, :, None, :] * image[:, None, :, None]).reshape(n * out_h, batch * height)
            grad = (rows_in_image.t() @ per_row).view(batch, height, channels, width).transpose(1, 2)
        return grad.to(ctx.dtype).contiguous(), None, None, None, None


class MatmulMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign with `roi_align_matmul` on the CPU (no parameters: a
    drop-in in a detector's state dict)."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        levels_in = _filter_input(x, self.featmap_names)
        if levels_in[0].device.type != "cpu" or self.sampling_ratio <= 0:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(levels_in, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        size = tuple(self.output_size)
        if len(levels_in) == 1:
            return roi_align_matmul(levels_in[0], rois, size, self.scales[0], self.sampling_ratio)
        level_of = self.map_levels(boxes)
        first = levels_in[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *size))
        for level, (features, scale) in enumerate(zip(levels_in, self.scales)):
            index = torch.where(level_of == level)[0]
            if index.numel():
                result[index] = roi_align_matmul(features, rois[index], size, scale,
                                                 self.sampling_ratio).to(result.dtype)
        return result
