"""Mask R-CNN + FPN composed from torchvision's parts, with the paper's norm everywhere.

The norm goes where the paper puts it (§3.1, following Wu & He's GN paper): the ResNet backbone,
the FPN, the box head (4 conv + 1 fc, "4conv1fc") and the mask head (4 conv). The RPN head and
the predictors have no norm, as in Detectron. Nothing is frozen, in either arm: the paper
fine-tunes the whole network (torchvision's habit of freezing the stem and layer1 when weights
are given does not apply here: the backbone is built directly, without `trainable_layers`).

`build_mask_rcnn` only builds; the weights come from `models.init`: `init_scratch` for both arms,
then `load_backbone` for the pretrained one, so the two arms differ in the backbone's initial
weights and in nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchvision import models as tvm
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from models.choices import BACKBONES, PROFILES
from models.norms import norm_factory
from models.roi_align import MatmulMultiScaleRoIAlign
from models.small_convs import use_small_map_convs

# Output channels of layer1..layer4: basic blocks (18/34) and bottlenecks (50 and deeper).
_STAGE_CHANNELS = {"resnet18": [64, 128, 256, 512], "resnet34": [64, 128, 256, 512]}
_BOTTLENECK_CHANNELS = [256, 512, 1024, 2048]


@dataclass(frozen=True)
class DetectorProfile:
    """The sizes that differ between the paper's detector and the CPU-sized one."""

    fpn_channels: int
    head_channels: int  # the 4 convs of the box head and of the mask head
    box_fc: int  # the box head's fc
    anchor_sizes: tuple[int, ...]  # one per FPN level P2..P6 (strides 4..64)
    rpn_pre_nms_train: int
    rpn_pre_nms_test: int
    rpn_post_nms_train: int
    rpn_post_nms_test: int
    rpn_batch_per_image: int
    box_batch_per_image: int
    detections_per_image: int
    roi_sampling_ratio: int  # RoIAlign samples per bin side


DETECTOR_PROFILES = {
    # torchvision's / Detectron's Mask R-CNN FPN numbers; anchors 32..512 at strides 4..64.
    "paper": DetectorProfile(fpn_channels=256, head_channels=256, box_fc=1024,
                             anchor_sizes=(32, 64, 128, 256, 512),
                             rpn_pre_nms_train=2000, rpn_pre_nms_test=1000,
                             rpn_post_nms_train=2000, rpn_post_nms_test=1000,
                             rpn_batch_per_image=256, box_batch_per_image=512,
                             detections_per_image=100, roi_sampling_ratio=2),
    # For ~64 px images with a few objects of 10-45 px: anchors at 2x the stride, narrow heads
    # (GN there has 32 groups of one channel), few proposals and RoIs, one RoIAlign sample per
    # bin. Measured on 2 CPU cores: ~0.22 s per iteration of 4 images on one thread, against
    # ~0.43 s with 64-channel heads, 64 RoIs per image and 2 samples per bin. At most 20
    # detections per image (images hold 1-4 objects): the mask head runs on every detection,
    # and with 50 an untrained model's evaluation of 100 images took 7.1 s against 4.1 s.
    "tiny": DetectorProfile(fpn_channels=64, head_channels=32, box_fc=128,
                            anchor_sizes=(8, 16, 32, 64, 128),
                            rpn_pre_nms_train=300, rpn_pre_nms_test=150,
                            rpn_post_nms_train=150, rpn_post_nms_test=100,
                            rpn_batch_per_image=64, box_batch_per_image=32,
                            detections_per_image=20, roi_sampling_ratio=1),
}


def build_resnet(backbone: str, norm: str, num_classes: int = 1000) -> tvm.ResNet:
    """A torchvision ResNet/ResNeXt with `norm` in every norm slot, torchvision's init, no weights."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    builder = getattr(tvm, backbone)
    return builder(weights=None, num_classes=num_classes, norm_layer=norm_factory(norm))


def stage_channels(backbone: str) -> list[int]:
    return _STAGE_CHANNELS.get(backbone, _BOTTLENECK_CHANNELS)


def build_backbone_fpn(backbone: str, norm: str, fpn_channels: int) -> BackboneWithFPN:
    """ResNet layer1..layer4 -> FPN P2..P5 (+ P6 by max-pool), norm in both, nothing frozen. Its
    convs compute tiny maps (layer4's 2 x 2 at 64 px) as unfold + matmul on the CPU
    (`models.small_convs`): the same parameters and outputs."""
    resnet = build_resnet(backbone, norm)
    fpn = BackboneWithFPN(resnet, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                          in_channels_list=stage_channels(backbone), out_channels=fpn_channels,
                          extra_blocks=LastLevelMaxPool(), norm_layer=norm_factory(norm))
    return use_small_map_convs(fpn)


def build_mask_rcnn(*, backbone: str, norm: str, num_classes: int, profile: str = "paper",
                    min_size: int = 800, max_size: int = 1333) -> MaskRCNN:
    """Mask R-CNN + FPN for `num_classes` foreground classes (background is added here).

    Weights are torchvision's construction defaults; call `models.init.init_scratch` (both arms)
    and then `models.init.load_backbone` (pretrained arm) before training.
    """
    if profile not in DETECTOR_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes} must be >= 1 (foreground classes)")
    p = DETECTOR_PROFILES[profile]
    norm_layer = norm_factory(norm)
    c = p.fpn_channels
    anchors = AnchorGenerator(sizes=tuple((s,) for s in p.anchor_sizes),
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(p.anchor_sizes))
    levels = ["0", "1", "2", "3"]
    model = MaskRCNN(
        build_backbone_fpn(backbone, norm, c), num_classes=None,
        min_size=min_size, max_size=max_size,
        rpn_anchor_generator=anchors, rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=p.rpn_pre_nms_train, rpn_pre_nms_top_n_test=p.rpn_pre_nms_test,
        rpn_post_nms_top_n_train=p.rpn_post_nms_train, rpn_post_nms_top_n_test=p.rpn_post_nms_test,
        rpn_batch_size_per_image=p.rpn_batch_per_image,
        box_roi_pool=MatmulMultiScaleRoIAlign(levels, output_size=7, sampling_ratio=p.roi_sampling_ratio),
        box_head=FastRCNNConvFCHead((c, 7, 7), [p.head_channels] * 4, [p.box_fc], norm_layer=norm_layer),
        box_predictor=FastRCNNPredictor(p.box_fc, num_classes + 1),
        box_batch_size_per_image=p.box_batch_per_image, box_detections_per_img=p.detections_per_image,
        mask_roi_pool=MatmulMultiScaleRoIAlign(levels, output_size=14, sampling_ratio=p.roi_sampling_ratio),
        mask_head=MaskRCNNHeads(c, [p.head_channels] * 4, 1, norm_layer=norm_layer),
        mask_predictor=MaskRCNNPredictor(p.head_channels, p.head_channels, num_classes + 1),
    )
    return heads_output_fp32(model)


def heads_output_fp32(model: MaskRCNN) -> MaskRCNN:
    """Make the RPN head and the box and mask predictors hand their outputs on in fp32.

    Under bf16 autocast their layers compute in bf16 and return bf16, and torchvision decodes
    boxes in the regression's dtype (`BoxCoder.decode_single` casts the anchors or proposals to
    it): every proposal and detection would be rounded to bf16, a step of 0.25 px at 32-64 px
    and 4 px at 512-1024 px. Cast back here, the layers still run in bf16 and the boxes are
    decoded in fp32. Measured on the two-class synthetic set (scratch, 1,200 iterations of 4
    images, bf16): bbox AP 70.3 / 68.9 against 66.6 / 66.8 (seeds 0 / 1), AP75 +1 to +4.
    Forward hooks: the parameters and state-dict keys are unchanged."""
    for module in (model.rpn.head, model.roi_heads.box_predictor, model.roi_heads.mask_predictor):
        if module is not None:
            module.register_forward_hook(_outputs_fp32)
    return model


def _outputs_fp32(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_outputs_fp32(_module, _inputs, o) for o in output)
    return output

