"""The backbone's pre-training (the ImageNet stage): train it as a classifier, write the
checkpoint that `init: pretrained` loads.

The checkpoint is `{"backbone": state dict, "meta": {...}}` and loads with
`torch.load(weights_only=True)`. Its metadata records what the pre-training saw (images,
instances, pixels: the paper's Fig. 2 counts it), the data, image size, backbone, norm, epochs
and the final train/val accuracy.

`train_classifier` is the loop, sharded over the ranks of the process group if there is one;
`study.tune.weights.run_pretrain` runs it in the calling process (one worker, no GPU) or as a Ray
Train job (several workers, or GPUs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from models.classifier import backbone_state, build_classifier
from models.norms import convert_sync_batchnorm, parameter_groups
from study.config import PretrainConfig
from study.data.classification import ClassSynthSpec, load_image_folder, write_classification_set
from study.layout import atomic_write
from study.train.build import build_sgd
from study.train.precision import use_bf16
from study.train.steps import classifier_step
from study.train import collectives


def cosine_lr(iteration: int, total: int, base_lr: float, warmup_iters: int) -> float:
    """Linear warm-up from 0, then a cosine from `base_lr` to 0 at `total` iterations."""
    if iteration < warmup_iters:
        return base_lr * (iteration + 1) / warmup_iters
    progress = (iteration - warmup_iters) / max(1, total - warmup_iters)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def classification_data(pcfg: PretrainConfig, data_dir: str | Path,
                        progress: Callable[[str], None] = print) -> tuple[Dataset, Dataset, list[str], str]:
    """(train, val, classes, description) for `pcfg.data`; the synthetic set is cached in `data_dir`."""
    if pcfg.data == "synthetic":
        spec = ClassSynthSpec(train_images=pcfg.train_images, val_images=pcfg.val_images,
                              image_size=pcfg.image_size, seed=pcfg.seed)
        root = write_classification_set(data_dir, spec, progress=progress)
        description = f"synthetic shapes ({spec.train_images} train, seed {spec.seed})"
    else:
        root = Path(pcfg.data.removeprefix("imagefolder:")).expanduser().resolve()
        description = f"ImageFolder {root}"
    train, val, classes = load_image_folder(root, pcfg.image_size, seed=pcfg.seed)
    return train, val, classes, description


@torch.no_grad()
def _val_accuracy(model: nn.Module, val: Dataset, batch_size: int, device: torch.device) -> float:
    model.eval()
    shard = torch.utils.data.Subset(val, list(range(collectives.rank(), len(val), collectives.world_size())))
    correct = total = 0
    for images, labels in DataLoader(shard, batch_size=batch_size):
        pred = model(images.to(device)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        total += labels.numel()
    counts = collectives.sum_over_ranks({"correct": correct, "total": total})
    model.train()
    return counts["correct"] / max(counts["total"], 1)


@dataclass(frozen=True)
class PretrainRecord:
    """What a pre-training saw and reached, saved in its checkpoint (`meta`) and carried into every
    pretrained trial's metric rows (`pretrain_*_seen`: the samples behind its backbone)."""

    backbone: str
    norm: str
    data: str
    classes: int
    image_size: int
    iterations: int
    batch_size: int
    epochs: float
    images_seen: int
    instances_seen: int
    pixels_seen: int
    train_accuracy: float
    val_accuracy: float
    chance_accuracy: float
    seconds: float
    workers: int
    seed: int
    precision: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PretrainRecord | None:
        """The record in a checkpoint's metadata; None for weights that no `study pretrain` made
        (a torchvision name, Detectron's or timm's files, a checkpoint of an older version)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: meta[n] for n in names}) if all(n in meta for n in names) else None


def build_pretrain_optimizer(model: nn.Module, pcfg: PretrainConfig) -> torch.optim.Optimizer:
    """`pcfg.optimizer`: SGD as the detector's (`build_sgd`, fused) or AdamW; no weight decay on norms."""
    if pcfg.optimizer == "sgd":
        return build_sgd(model, lr=pcfg.base_lr, momentum=pcfg.momentum, weight_decay=pcfg.weight_decay,
                         weight_decay_norm=0.0)
    return torch.optim.AdamW(parameter_groups(model, weight_decay=pcfg.weight_decay, weight_decay_norm=0.0),
                             lr=pcfg.base_lr)


def train_classifier(pcfg: PretrainConfig, *, backbone: str, data_dir: str | Path,
                     device: torch.device | str = "cpu",
                     progress: Callable[[str], None] = print) -> tuple[dict[str, torch.Tensor], PretrainRecord]:
    """Train on `device`; return (backbone state dict, its record). In a process group, each rank
    trains its shard of every batch (DDP)."""
    rank, world_size = collectives.rank(), collectives.world_size()
    say = progress if rank == 0 else (lambda _msg: None)
    norm = pcfg.norm_used
    start = time.perf_counter()
    train, val, classes, description = classification_data(pcfg, data_dir, say)
    torch.manual_seed(pcfg.seed)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_classifier(backbone=backbone, norm=norm, num_classes=len(classes)).to(device)
    if norm == "syncbn" and collectives.active():
        if device.type != "cuda":
            say("norm syncbn on CPU workers: pre-training with per-worker BatchNorm")
        else:
            model = convert_sync_batchnorm(model, norm, device)
    net = collectives.data_parallel(model, device)
    bf16 = use_bf16(pcfg.precision, device)
    optimizer = build_pretrain_optimizer(model, pcfg)
    per_rank = pcfg.batch_size // world_size
    iterations = max(1, round(pcfg.epochs * len(train) / pcfg.batch_size))
    sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=pcfg.seed, drop_last=True)
    loader = DataLoader(train, batch_size=per_rank, sampler=sampler, drop_last=True,
                        num_workers=pcfg.loader_workers, persistent_workers=pcfg.loader_workers > 0)
    say(f"pre-training {backbone}-{norm} on {description}: {len(train)} train / {len(val)} val images, "
        f"{len(classes)} classes, {iterations} iterations of {pcfg.batch_size} ({pcfg.epochs:g} epochs), "
        f"{world_size} worker(s) on {device.type}, {'bf16 autocast' if bf16 else 'fp32'}")
    it, epoch, window = 0, 0, {"loss": 0.0, "correct": 0.0, "seen": 0.0}  # since the last print
    last_acc, tick = 0.0, time.perf_counter()
    every = max(1, iterations // 10)
    while it < iterations:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            if it >= iterations:
                break
            lr = cosine_lr(it, iterations, pcfg.base_lr, pcfg.warmup_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logits = classifier_step(net, images.to(device, non_blocking=True), labels.to(device),
                                           optimizer, bf16=bf16)
            if not math.isfinite(loss):  # every rank stops, none waits in backward
                raise FloatingPointError(f"pre-training loss is not finite at iteration {it} on some rank: "
                                         f"lower pretrain.base_lr (now {pcfg.base_lr})")
            window["loss"] += loss * labels.numel()
            window["correct"] += float((logits.argmax(1).cpu() == labels).sum())
            window["seen"] += labels.numel()
            it += 1
            if it % every == 0 or it == iterations:
                summed = collectives.sum_over_ranks(window)
                seen = summed["seen"]
                last_acc = summed["correct"] / seen
                now = time.perf_counter()
                say(f"  it {it}/{iterations}  lr {lr:.4f}  loss {summed['loss'] / seen:.3f}  train acc "
                    f"{100 * last_acc:.1f}%  {seen / (now - tick):.0f} img/s")
                window, tick = {"loss": 0.0, "correct": 0.0, "seen": 0.0}, now
        epoch += 1
    val_acc = _val_accuracy(model, val, per_rank, device)
    images_seen = iterations * pcfg.batch_size
    record = PretrainRecord(
        backbone=backbone, norm=norm, data=description, classes=len(classes), image_size=pcfg.image_size,
        iterations=iterations, batch_size=pcfg.batch_size, epochs=images_seen / len(train),
        images_seen=images_seen,
        # one labelled object per image, as the paper counts ImageNet (Fig. 2)
        instances_seen=images_seen, pixels_seen=images_seen * pcfg.image_size ** 2,
        train_accuracy=last_acc, val_accuracy=val_acc, chance_accuracy=1 / len(classes),
        seconds=time.perf_counter() - start, workers=world_size, seed=pcfg.seed,
        precision="bf16 autocast" if bf16 else "fp32",
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    say(f"val accuracy {100 * val_acc:.1f}% (chance {100 / len(classes):.1f}%) after "
        f"{record.seconds:.0f} s")
    return backbone_state(model), record


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], record: PretrainRecord) -> Path:
    """Write atomically: a crash never leaves a half-written checkpoint behind. The record goes in
    as plain values (`torch.load(weights_only=True)` reads it back)."""
    return atomic_write(path, lambda tmp: torch.save({"backbone": state, "meta": record.to_dict()}, tmp))


def cached_checkpoint_path(pcfg: PretrainConfig, backbone: str, cache_dir: str | Path) -> Path:
    """Where the checkpoint of (pcfg, backbone) is cached: the name carries a hash of both."""
    key = json.dumps({"backbone": backbone, **dataclasses.asdict(pcfg)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(cache_dir) / f"pretrain-{backbone}-{pcfg.norm_used}-{digest}.pt"
