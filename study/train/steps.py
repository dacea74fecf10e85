"""The detection steps the trainer is made of (cf. torchvision's references/detection/engine.py):
one optimisation step, and prediction + COCO evaluation of a model on a split."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from study.data.coco import InstanceDataset, collate
from study.train import collectives
from study.train.evaluation import evaluate_coco, masks_to_rle
from study.train.precision import autocast


def train_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]],
               optimizer: torch.optim.Optimizer, *, clip_grad_norm: float | None = None,
               bf16: bool = False) -> dict[str, float]:
    """One SGD step on a batch; returns the losses (and their sum as 'loss') as floats.

    `bf16` runs the forward pass under bf16 autocast on the images' device (no loss scaling is
    needed with bf16; see `study.train.precision`).

    Divergence is agreed before `backward`: if the loss is not finite on any rank of the process
    group, no rank steps and every rank returns a NaN 'loss' (the global batch's loss is not
    finite), so the caller stops the run as diverged instead of training on NaNs. Were one rank to
    skip `backward` alone, the others would wait in DDP's gradient all-reduce until the process
    group's timeout.
    """
    with autocast(images[0].device, bf16):
        losses = model(images, [{k: v for k, v in t.items() if k in ("boxes", "labels", "masks")}
                                for t in targets])
    total = sum(losses.values())
    parts = torch.stack([v.detach().float() for v in (*losses.values(), total)]).tolist()  # one sync
    values = dict(zip([*losses, "loss"], parts))
    if not apply_gradients(total, values["loss"], optimizer, model=model, clip_grad_norm=clip_grad_norm):
        return {**values, "loss": math.nan}
    return values


def apply_gradients(loss: torch.Tensor, value: float, optimizer: torch.optim.Optimizer, *,
                    model: nn.Module | None = None, clip_grad_norm: float | None = None) -> bool:
    """The update every training loop of the project makes once it has its loss (`value`: the
    loss as a float): if the loss is finite on every rank, zero the gradients, backpropagate, clip
    (`clip_grad_norm`, over `model`'s parameters) and step; else no rank steps. Returns whether it
    stepped. The detector's `train_step` and the classifier's `classifier_step` go through it."""
    if not collectives.all_finite(value):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm is not None:
        assert model is not None, "clipping needs the model's parameters"
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    return True


def classifier_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    optimizer: torch.optim.Optimizer, *, bf16: bool = False) -> tuple[float, torch.Tensor]:
    """One step of the pre-training classifier (cross-entropy, computed in fp32): (the loss as a
    float, NaN if it was not finite on some rank and nothing stepped; the logits, for accuracy)."""
    with autocast(images.device, bf16):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels)
    value = loss.item()
    return (value if apply_gradients(loss, value, optimizer) else math.nan), logits


@torch.no_grad()
def predict(model: nn.Module, dataset: InstanceDataset, *, indices: list[int] | None = None,
            batch_size: int = 8, device: torch.device | str = "cpu",
            mask_threshold: float = 0.5, bf16: bool = False) -> list[dict[str, Any]]:
    """COCO-format results (bbox and RLE segmentation) for the images of `dataset`; `bf16` runs
    the model under bf16 autocast, as `train_step` trains it (0.72x the time on 200 val images
    at 64 px on one core with native bf16, bench/suite.py part step).

    The dataset must not resize (min_size/max_size None): the model resizes internally and maps
    its outputs back to the original image size, which is what COCOeval compares against.
    """
    if dataset.min_size is not None:
        raise ValueError("predict() needs a dataset at the original image size (no min_size)")
    was_training = model.training
    model.eval()
    category_ids = dataset.split.category_ids
    subset = torch.utils.data.Subset(dataset, indices if indices is not None else range(len(dataset)))
    results: list[dict[str, Any]] = []
    # Its own generator: an iterator draws a seed from the global RNG otherwise, and evaluating
    # would change the RPN/RoI sampling of the training that follows (and so depend on eval_period).
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate, generator=torch.Generator())
    for images, targets in loader:
        with autocast(torch.device(device), bf16):
            outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets):
            boxes = out["boxes"].cpu()
            masks = (out["masks"][:, 0] > mask_threshold).cpu().numpy()
            rles = masks_to_rle(masks) if len(masks) else []
            for box, label, score, rle in zip(boxes.tolist(), out["labels"].tolist(),
                                              out["scores"].tolist(), rles):
                results.append({"image_id": target["image_id"], "category_id": category_ids[label - 1],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "score": score, "segmentation": rle})
    model.train(was_training)
    return results


def coco_metrics(dataset: InstanceDataset, results: list[dict[str, Any]],
                 image_ids: list[int] | None = None) -> dict[str, float]:
    """bbox_AP, bbox_AP50, ..., segm_APl (0-100) of `results` on the dataset's ground truth."""
    ids = list(dataset.image_ids) if image_ids is None else image_ids
    metrics = {}
    for iou in ("bbox", "segm"):
        for key, value in evaluate_coco(dataset.split.coco, results, iou, image_ids=ids).items():
            metrics[f"{iou}_{key}"] = value
    return metrics


def evaluate(model: nn.Module, dataset: InstanceDataset, *, batch_size: int = 8,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Predict every image of `dataset` and evaluate (single process)."""
    return coco_metrics(dataset, predict(model, dataset, batch_size=batch_size, device=device))
