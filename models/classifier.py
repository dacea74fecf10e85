"""The pre-training model: the detector's backbone as an image classifier (the ImageNet stage).

Its state dict, less the final `fc`, has exactly the key names of the detector's
`backbone.body`, so `models.init.load_backbone` takes it as is.
"""

from __future__ import annotations

import torch
from torchvision.models import ResNet

from models.init import msra_fill_
from models.mask_rcnn import build_resnet


def build_classifier(*, backbone: str, norm: str, num_classes: int) -> ResNet:
    """A ResNet classifier with the detector's norm; convs MSRA (fan-out), norms 1 / 0."""
    model = build_resnet(backbone, norm, num_classes=num_classes)
    msra_fill_(model)
    return model


def backbone_state(classifier: ResNet) -> dict[str, torch.Tensor]:
    """The classifier's weights without its head: what a detector's backbone loads."""
    return {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()
            if not k.startswith("fc.")}
