"""Does a pre-trained backbone transfer? Scratch vs each given checkpoint, same detector, same data.

Trains the tiny-profile Mask R-CNN (ResNet-18, GN) on the synthetic detection set once from
scratch and once from each `study pretrain` checkpoint per seed (the backbone's initial weights
are the only difference; data order, flips and the heads' init are the seed's), and reports the
COCO bbox AP at the evaluation points and the early gap over scratch, paired by seed, with its
95% t-interval: the paper's first observation (pre-training speeds up early convergence) in
miniature. Each run is its own one-thread process, `--jobs` at a time. No Ray.

    python bench/transfer.py --pretrained a.pt,b.pt --iters 200 --eval-at 100,200 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from models.init import init_scratch, load_backbone
from models.weight_files import load_state_file
from models.mask_rcnn import build_mask_rcnn
from study.analysis.claims import t_interval
from study.data.coco import InstanceDataset, collate, load_coco
from study.data.sampling import IterationBatchSampler
from study.data.synthetic import SynthSpec, write_synthetic
from study.config import SolverConfig
from study.plan.schedule import Schedule, lr_at
from study.train.build import build_sgd
from study.train.steps import evaluate, train_step


def datasets(args: argparse.Namespace) -> tuple[InstanceDataset, InstanceDataset]:
    paths = write_synthetic(args.data, SynthSpec(image_size=args.image_size, val_images=args.val_images))
    train = InstanceDataset(load_coco(paths.train_annotations, paths.train_images, filter_empty=True),
                            min_size=args.image_size, max_size=args.image_size)
    return train, InstanceDataset(load_coco(paths.val_annotations, paths.val_images))


def run_arm(job: tuple[str | None, int, argparse.Namespace]) -> dict[str, Any]:
    """One run: `weights` None is the scratch arm. In its own process, on one thread."""
    weights, seed, args = job
    torch.set_num_threads(1)
    train, val = datasets(args)
    torch.manual_seed(seed)
    model = build_mask_rcnn(backbone="resnet18", norm=args.norm, num_classes=train.split.num_classes,
                            profile="tiny", min_size=args.image_size, max_size=args.image_size)
    init_scratch(model)
    fresh: list[str] = []
    if weights is not None:
        fresh = load_backbone(model, weights).fresh
    optimizer = build_sgd(model, lr=args.lr, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    sampler = IterationBatchSampler(len(train), args.batch, seed=seed, start_iter=0, max_iter=args.iters)
    losses, evals, start = [], {}, time.perf_counter()
    model.train()
    solver = SolverConfig(base_lr=args.lr, warmup_iters=args.warmup)  # Detectron's warm-up from lr/3, no drop
    schedule = Schedule(max_iter=args.iters, milestones=(), warmup_iters=args.warmup)
    for it, (images, targets) in enumerate(DataLoader(train, batch_sampler=sampler, collate_fn=collate), 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it - 1, schedule, solver)
        losses.append(train_step(model, images, targets, optimizer)["loss"])
        if it in args.eval_at:
            m = evaluate(model, val)
            evals[it] = {"bbox_AP": m["bbox_AP"], "segm_AP": m["segm_AP"]}
    name = "scratch" if weights is None else Path(weights).stem
    print(f"  {name:28s} seed {seed}: bbox AP " + ", ".join(f"{evals[i]['bbox_AP']:.1f} @{i}" for i in sorted(evals))
          + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"arm": name, "seed": seed, "losses": losses, "evals": evals, "fresh_tensors": len(fresh),
            "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", required=True, help="comma-separated `study pretrain` checkpoints")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic set (made if missing)")
    p.add_argument("--norm", default="gn", help="the detector's norm (default gn)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--eval-at", default="100,200", help="comma-separated iterations")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()
    args.eval_at = {int(x) for x in args.eval_at.split(",")}
    checkpoints = [c for c in args.pretrained.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets(args)  # generate once, before the workers race to
    metas = {Path(c).stem: load_state_file(c)["meta"] for c in checkpoints}
    for name, meta in metas.items():
        print(f"{name}: {meta['backbone']}-{meta['norm']}, val accuracy {100 * meta['val_accuracy']:.1f}% "
              f"after {meta['images_seen']} images")
    jobs = [(weights, seed, args) for weights in (None, *checkpoints) for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run_arm, jobs, chunksize=1)

    by = {(r["arm"], r["seed"]): r for r in results}
    last = max(args.eval_at)
    print(f"\nbbox AP per seed at the evaluation points; gap = pretrained - scratch at {last}, paired by seed")
    for arm in ("scratch", *metas):
        aps = " | ".join(", ".join(f"{by[arm, s]['evals'][i]['bbox_AP']:.1f}" for s in seeds)
                         for i in sorted(args.eval_at))
        line = f"{arm:28s} {aps}"
        if arm != "scratch":
            gap = t_interval([by[arm, s]["evals"][last]["bbox_AP"] - by["scratch", s]["evals"][last]["bbox_AP"]
                              for s in seeds])
            line += (f"   gap {gap.mean:+.1f} ({gap.low:+.1f} to {gap.high:+.1f}); "
                     f"{by[arm, seeds[0]]['fresh_tensors']} backbone tensors left fresh")
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"metas": metas, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))
    print(f"mean run time {statistics.fmean(r['seconds'] for r in results):.0f} s")


if __name__ == "__main__":
    main()
