"""Does the pre-trained backbone transfer? Scratch vs pretrained, same detector, same data order.

Trains the tiny-profile Mask R-CNN on the synthetic detection set twice per seed, once from
scratch and once from a `study pretrain` checkpoint (the only difference between the runs), and
prints the training loss per window of iterations and the COCO bbox/mask AP on the validation
set at the evaluation points: the paper's first observation (pre-training speeds up early
convergence) in miniature. Single process, no Ray.

    python bench/transfer.py --pretrained runs/pretrain/resnet18_gn.pt --iters 300 --eval-at 150,300
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from models.init import init_scratch, load_backbone, load_state_file
from models.mask_rcnn import build_mask_rcnn
from models.norms import parameter_groups
from study.data.coco import InstanceDataset, collate, load_coco
from study.data.sampling import IterationBatchSampler
from study.data.synthetic import SynthSpec, write_synthetic
from study.train.steps import evaluate, train_step


def run_arm(init: str, seed: int, args: argparse.Namespace, train: InstanceDataset,
            val: InstanceDataset, meta: dict) -> dict:
    torch.manual_seed(seed)
    model = build_mask_rcnn(backbone=meta["backbone"], norm=args.norm or meta["norm"],
                            num_classes=train.split.num_classes,
                            profile="tiny", min_size=args.image_size, max_size=args.image_size)
    init_scratch(model)
    if init == "pretrained":
        print("  " + load_backbone(model, args.pretrained).summary())
    optimizer = torch.optim.SGD(parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0),
                                lr=args.lr, momentum=0.9)
    sampler = IterationBatchSampler(len(train), args.batch, seed=seed, start_iter=0, max_iter=args.iters)
    losses, evals, start = [], {}, time.perf_counter()
    model.train()
    for it, (images, targets) in enumerate(DataLoader(train, batch_sampler=sampler, collate_fn=collate), 1):
        warm = min(1.0, 1 / 3 + (2 / 3) * it / args.warmup)  # linear warm-up from lr/3 (Detectron)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm
        losses.append(train_step(model, images, targets, optimizer)["loss"])
        if it in args.eval_at:
            m = evaluate(model, val)
            evals[it] = {"bbox_AP": m["bbox_AP"], "segm_AP": m["segm_AP"]}
            print(f"  {init:10s} seed {seed} it {it:4d}: loss(last 50) "
                  f"{statistics.fmean(losses[-50:]):.3f}  bbox AP {m['bbox_AP']:.1f}  segm AP {m['segm_AP']:.1f}"
                  f"  ({time.perf_counter() - start:.0f} s)")
    return {"losses": losses, "evals": evals, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", type=Path, required=True, help="a `study pretrain` checkpoint")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic set (made if missing)")
    p.add_argument("--norm", default=None, help="the detector's norm (default: the checkpoint's)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--eval-at", default="100,200,300", help="comma-separated iterations")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--window", type=int, default=50, help="iterations per loss window")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()
    args.eval_at = {int(x) for x in args.eval_at.split(",")}
    torch.set_num_threads(2)

    paths = write_synthetic(args.data, SynthSpec(image_size=args.image_size))
    train = InstanceDataset(load_coco(paths.train_annotations, paths.train_images, filter_empty=True),
                            min_size=args.image_size, max_size=args.image_size)
    val = InstanceDataset(load_coco(paths.val_annotations, paths.val_images))
    meta = load_state_file(args.pretrained)["meta"]
    print(f"pretrained backbone: {meta['backbone']}-{meta['norm']}, val accuracy "
          f"{100 * meta['val_accuracy']:.1f}% after {meta['images_seen']} images")
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for init in ("scratch", "pretrained"):
            results[f"{init}/{seed}"] = run_arm(init, seed, args, train, val, meta)

    w = args.window
    print(f"\nmean training loss per {w}-iteration window, and AP at the evaluation points")
    header = " ".join(f"{f'{i + 1}-{i + w}':>9}" for i in range(0, args.iters, w))
    print(f"{'run':16s} {header}  " + "  ".join(f"AP@{it}" for it in sorted(args.eval_at)))
    for name, r in results.items():
        windows = " ".join(f"{statistics.fmean(r['losses'][i:i + w]):9.3f}" for i in range(0, args.iters, w))
        aps = "  ".join(f"{r['evals'][it]['bbox_AP']:6.1f}" for it in sorted(args.eval_at))
        print(f"{name:16s} {windows}  {aps}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
