"""What a trial is built from: its device, its data (train subset and val set), its detector and its SGD."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from models.mask_rcnn import build_mask_rcnn
from models.norms import parameter_groups
from study.config import StudyConfig
from study.data.coco import InstanceDataset, load_coco
from study.data.sampling import nested_subset, subset_size
from study.data.synthetic import write_synthetic
from study.plan.trials import Size


def trial_device(cfg: StudyConfig) -> str:
    """Where a one-process trial trains: 'cuda' when the study gives workers GPUs, else 'cpu'."""
    if cfg.resources.gpus_per_worker <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("resources.gpus_per_worker > 0 but this process sees no CUDA device "
                           "(torch.cuda.is_available() is False); set gpus_per_worker: 0 for a CPU run")
    return "cuda"


def split_paths(cfg: StudyConfig, data_root: str | Path) -> tuple[tuple[str, str], tuple[str, str]]:
    """((train annotations, images), (val annotations, images)); the synthetic set is made if missing."""
    if cfg.data.source == "synthetic":
        p = write_synthetic(Path(data_root) / "synthetic", cfg.data.synthetic)
        return (str(p.train_annotations), str(p.train_images)), (str(p.val_annotations), str(p.val_images))
    assert cfg.data.train is not None and cfg.data.val is not None
    return ((cfg.data.train.annotations, cfg.data.train.images),
            (cfg.data.val.annotations, cfg.data.val.images))


def trial_datasets(cfg: StudyConfig, size: Size, data_root: str | Path
                   ) -> tuple[InstanceDataset, InstanceDataset]:
    """(the training subset of `size`, resized for training; val at original size for COCOeval)."""
    (train_ann, train_img), (val_ann, val_img) = split_paths(cfg, data_root)
    train_split = load_coco(train_ann, train_img, filter_empty=cfg.data.filter_empty)
    n = subset_size(len(train_split.image_ids), train_images=size.train_images,
                    data_fraction=size.data_fraction, source=train_ann)
    ids = nested_subset(train_split.image_ids, n, cfg.data.subset_seed)
    train = InstanceDataset(train_split, ids, min_size=cfg.model.min_size, max_size=cfg.model.max_size)
    return train, InstanceDataset(load_coco(val_ann, val_img))


def build_detector(cfg: StudyConfig, num_classes: int) -> MaskRCNN:
    """The study's Mask R-CNN (`cfg.model`), with torchvision's default init (`models.init` re-inits it)."""
    m = cfg.model
    return build_mask_rcnn(backbone=m.backbone, norm=m.norm, num_classes=num_classes, profile=m.profile,
                           min_size=m.min_size, max_size=m.max_size)


def build_sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
              weight_decay_norm: float) -> torch.optim.SGD:
    """SGD with momentum, no weight decay on norm parameters (`parameter_groups`), as one fused
    kernel per step: torch's default SGD makes four passes over every parameter (weight decay,
    momentum, update) and allocates a tensor for the first: fused, a trial step on one CPU core
    takes 0.90x the time (bench/suite.py part step). The update is the same."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    return torch.optim.SGD(parameter_groups(model, weight_decay=weight_decay, weight_decay_norm=weight_decay_norm),
                           lr=lr, momentum=momentum, fused=fused)
