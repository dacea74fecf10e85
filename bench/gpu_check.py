"""How fast does one GPU train the paper's detector? A few minutes, no data needed.

Trains Mask R-CNN R50-FPN with GroupNorm (the paper profile, images resized to 800 x 1333) from
scratch on generated tensors (textured noise with 1-4 rectangular instances per image, masks and
boxes consistent) for a few iterations, with what a GPU trial uses: bf16 autocast, SGD as in
`study.train.loop`. Prints seconds per iteration, images/s and peak GPU memory. Compare with
Detectron2's published 0.338 s/iter for scratch R50-FPN GN (8 V100, 2 images per GPU).

`--norm syncbn` trains the SyncBN variant the way a multi-GPU trial does: BatchNorm converted to
SyncBatchNorm (`models.norms.convert_sync_batchnorm`) and wrapped in DDP over an NCCL process
group, here of one GPU (so the statistics are not synchronised across cards, but the conversion,
NCCL and DDP all run). `--channels-last` converts the model to the channels-last memory format.
bench/gpu_check.sh runs the set of variants that the README's GPU table reports.

    python bench/gpu_check.py                       # on a GPU: R50-FPN GN, 2 images/iteration
    python bench/gpu_check.py --norm syncbn         # on a GPU: R50-FPN SyncBN through DDP + NCCL
    python bench/gpu_check.py --reduced --iters 3   # anywhere: ResNet-18 tiny profile at 64 px
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from models.init import init_scratch
from models.mask_rcnn import build_mask_rcnn
from models.norms import convert_sync_batchnorm
from study.train import collectives
from study.train.build import build_sgd
from study.train.steps import train_step


def batch(n: int, height: int, width: int, num_classes: int, gen: torch.Generator,
          device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """`n` images of `height` x `width` with 1-4 rectangle instances each (boxes, labels, masks)."""
    images, targets = [], []
    for _ in range(n):
        image = torch.rand(3, height, width, generator=gen) * 0.3
        k = int(torch.randint(1, 5, (1,), generator=gen))
        boxes, masks = [], torch.zeros(k, height, width, dtype=torch.uint8)
        for i in range(k):
            w = int(torch.randint(width // 8, width // 3, (1,), generator=gen))
            h = int(torch.randint(height // 8, height // 3, (1,), generator=gen))
            x = int(torch.randint(0, width - w, (1,), generator=gen))
            y = int(torch.randint(0, height - h, (1,), generator=gen))
            image[:, y:y + h, x:x + w] += torch.rand(3, 1, 1, generator=gen) * 0.7
            masks[i, y:y + h, x:x + w] = 1
            boxes.append([x, y, x + w, y + h])
        images.append(image.clamp(0, 1).to(device))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                        "labels": torch.randint(1, num_classes + 1, (k,), generator=gen).to(device),
                        "masks": masks.to(device)})
    return images, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reduced", action="store_true", help="ResNet-18, tiny profile, 64 px (runs on CPU)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    p.add_argument("--ims-per-gpu", type=int, default=2, help="images per iteration (default 2)")
    p.add_argument("--no-bf16", action="store_true", help="full fp32 on CUDA")
    p.add_argument("--norm", choices=("gn", "syncbn"), default="gn",
                   help="gn (default), or syncbn: SyncBatchNorm + DDP over NCCL (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="model in channels-last memory format")
    p.add_argument("--json", metavar="FILE", help="append the result to FILE as one JSON line")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, profile, size = ("resnet18", "tiny", (64, 64)) if args.reduced else ("resnet50", "paper", (800, 1333))
    if device.type == "cpu" and not args.reduced:
        p.error("no GPU here: the full check needs CUDA; use --reduced for a CPU smoke run")
    if args.norm == "syncbn" and device.type != "cuda":
        p.error("--norm syncbn needs CUDA: SyncBatchNorm does not run on CPU tensors")
    torch.manual_seed(0)
    model = build_mask_rcnn(backbone=backbone, norm=args.norm, num_classes=80, profile=profile,
                            min_size=size[0], max_size=size[1])
    init_scratch(model)
    model.to(device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net: torch.nn.Module = model
    if args.norm == "syncbn":  # what study.train.loop does on every worker of a multi-GPU trial
        collectives.start_process_group("nccl", rank=0, world_size=1, address="tcp://127.0.0.1:29533")
        model = convert_sync_batchnorm(model, "syncbn", device)
        net = collectives.data_parallel(model, torch.device("cuda", torch.cuda.current_device()))
    optimizer = build_sgd(model, lr=0.02 * args.ims_per_gpu / 16, momentum=0.9, weight_decay=1e-4,
                          weight_decay_norm=0.0)
    autocast = device.type == "cuda" and not args.no_bf16
    gen = torch.Generator().manual_seed(0)
    data = [batch(args.ims_per_gpu, size[0], size[1], 80, gen, device) for _ in range(4)]

    def step(i: int) -> float:
        images, targets = data[i % len(data)]
        return train_step(net, images, targets, optimizer, bf16=autocast)["loss"]

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.iters):
        loss = step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iters
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    memory = f", peak memory {peak:.2f} GiB" if peak is not None else ""
    precision = "bf16 autocast" if autocast else "fp32"
    layout = ", channels-last" if args.channels_last else ""
    norm = {"gn": "GN", "syncbn": "SyncBN+DDP"}[args.norm]
    print(f"{backbone}-FPN {norm} ({profile} profile, {size[0]}x{size[1]}), {args.ims_per_gpu} images/iteration, "
          f"{precision}{layout} on {name}: {seconds:.3f} s/iter, "
          f"{args.ims_per_gpu / seconds:.1f} images/s{memory}; last loss {loss:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"backbone": backbone, "norm": args.norm, "profile": profile,
                                "size": list(size), "ims_per_iter": args.ims_per_gpu,
                                "precision": precision, "channels_last": args.channels_last,
                                "device": name, "torch": torch.__version__, "iters": args.iters,
                                "s_per_iter": seconds, "images_per_s": args.ims_per_gpu / seconds,
                                "peak_memory_gib": peak, "last_loss": loss}) + "\n")
    if not args.reduced:
        print("Detectron2, scratch R50-FPN GN, 8 V100 x 2 images: 0.338 s/iter (its model zoo)")


if __name__ == "__main__":
    main()
