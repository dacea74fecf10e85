"""How fast does the detector learn per image? bbox AP after a fixed number of training images,
one change at a time: the measurements that size the embedded default study.

Each variant trains the tiny-profile Mask R-CNN (ResNet-18, GN, 64 px) on the generated
detection set (1,000 training / 100 val images unless the variant says otherwise) at a constant
LR after a linear warm-up from a third of it (no drop: this measures learning speed, not a
schedule), with the trial's precision (bf16 where the CPU has it natively), and evaluates COCO
bbox AP after each of `--images` training images. Each (variant, seed) is its own one-thread
process, `--jobs` at a time, as the study runs its trials. No Ray.

    python bench/sizing.py --variants base,lr0.08,rois128 --images 2400,4800 --seeds 0,1

A variant is a name in VARIANTS; what it changes from `base` is listed there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

BASE: dict[str, Any] = {"init": "scratch", "batch": 8, "lr": 0.04, "warmup": 50, "profile": {},
                        "image_size": 64, "train_images": 1000, "synth": {}}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "lr0.02": {"lr": 0.02},
    "lr0.08": {"lr": 0.08},
    "warmup10": {"warmup": 10},
    "batch16": {"batch": 16, "lr": 0.08},
    "batch4": {"batch": 4, "lr": 0.02},
    "batch4_lr0.04": {"batch": 4, "lr": 0.04},
    "lr0.16": {"lr": 0.16},
    "rois128": {"profile": {"box_batch_per_image": 128, "rpn_post_nms_train": 300}},
    "rpn256": {"profile": {"rpn_batch_per_image": 256}},
    "heads64": {"profile": {"head_channels": 64, "box_fc": 256}},
    "sampling2": {"profile": {"roi_sampling_ratio": 2}},
    "px96": {"image_size": 96},
    "pretrained": {"init": "pretrained"},
    "b4": {"batch": 4, "lr": 0.04},
    "b4_pretrained": {"batch": 4, "lr": 0.04, "init": "pretrained"},
    "b4_lr0.08": {"batch": 4, "lr": 0.08},
    "b4_few": {"batch": 4, "lr": 0.04, "synth": {"max_objects": 2}},
    "b4_big": {"batch": 4, "lr": 0.04, "synth": {"min_radius": 0.22, "max_radius": 0.4}},
    "b4_n3000": {"batch": 4, "lr": 0.04, "train_images": 3000},
    "b4_few_n3000": {"batch": 4, "lr": 0.04, "train_images": 3000, "synth": {"max_objects": 2}},
    "b4_few_n3000_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "synth": {"max_objects": 2},
                                "init": "pretrained"},
    "b4_few_n3000_px48": {"batch": 4, "lr": 0.04, "train_images": 3000, "image_size": 48,
                          "synth": {"max_objects": 2, "min_radius": 0.2, "max_radius": 0.4}},
    "b4_few_n3000_px48_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "image_size": 48,
                                     "synth": {"max_objects": 2, "min_radius": 0.2, "max_radius": 0.4},
                                     "init": "pretrained"},
    "b4_few_n3000_object": {"batch": 4, "lr": 0.04, "train_images": 3000,
                            "synth": {"max_objects": 2, "labels": "object"}},
    "b4_few_n3000_object_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "init": "pretrained",
                                       "synth": {"max_objects": 2, "labels": "object"}},
    "b4_one_n3000": {"batch": 4, "lr": 0.04, "train_images": 3000, "synth": {"max_objects": 1}},
    "b4_one_n3000_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "synth": {"max_objects": 1},
                                "init": "pretrained"},
    # a task with a ceiling: one large object, one category
    "b4_one_big_object": {"batch": 4, "lr": 0.04, "train_images": 3000,
                          "synth": {"max_objects": 1, "min_radius": 0.22, "max_radius": 0.40, "labels": "object"}},
    "b4_one_big_object_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "init": "pretrained",
                                     "synth": {"max_objects": 1, "min_radius": 0.22, "max_radius": 0.40,
                                               "labels": "object"}},
    # fewer shape classes: less for scratch to tell apart, still something for the stand-in to know
    "b4_three": {"batch": 4, "lr": 0.04, "train_images": 3000,
                 "synth": {"max_objects": 2, "classes": ("circle", "triangle", "star")}},
    "b4_three_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "init": "pretrained",
                            "synth": {"max_objects": 2, "classes": ("circle", "triangle", "star")}},
    "b4_two": {"batch": 4, "lr": 0.04, "train_images": 3000,
               "synth": {"max_objects": 2, "classes": ("circle", "triangle")}},
    "b4_two_pretrained": {"batch": 4, "lr": 0.04, "train_images": 3000, "init": "pretrained",
                          "synth": {"max_objects": 2, "classes": ("circle", "triangle")}},
    # two classes on scarce data: where scratch should fall behind for good
    **{f"b4_two_n{n}{arm}": {"batch": 4, "lr": 0.04, "train_images": n, "init": init,
                             "synth": {"max_objects": 2, "classes": ("circle", "triangle")}}
       for n in (30, 100) for arm, init in (("", "scratch"), ("_pretrained", "pretrained"))},
}


def settings(name: str) -> dict[str, Any]:
    """What variant `name` trains with: `BASE` with the variant's changes."""
    return {**BASE, **VARIANTS[name]}


def _spec(v: dict[str, Any], val_images: int):
    from study.data.synthetic import SynthSpec

    return SynthSpec(train_images=v["train_images"], val_images=val_images, image_size=v["image_size"],
                     **v["synth"])


def datasets(v: dict[str, Any], data_root: Path, val_images: int):
    from study.data.coco import InstanceDataset, load_coco
    from study.data.synthetic import write_synthetic

    spec = _spec(v, val_images)
    extra = "".join(f"_{k}{'-'.join(x) if isinstance(x, tuple) else x}" for k, x in sorted(v["synth"].items()))
    paths = write_synthetic(data_root / f"px{spec.image_size}_n{spec.train_images}{extra}", spec)
    size = v["image_size"]
    train = InstanceDataset(load_coco(paths.train_annotations, paths.train_images, filter_empty=True),
                            min_size=size, max_size=size)
    return train, InstanceDataset(load_coco(paths.val_annotations, paths.val_images))


def run(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    """One (variant, seed), in its own process on one thread."""
    name, seed, opts = job
    torch.set_num_threads(1)
    import models.mask_rcnn as mr
    from models.init import init_scratch, load_backbone
    from study.data.coco import collate
    from study.config import SolverConfig
    from study.data.sampling import IterationBatchSampler
    from study.plan.schedule import Schedule, lr_at
    from study.train.build import build_sgd
    from study.train.precision import use_bf16
    from study.train.steps import evaluate, train_step

    v = settings(name)
    train, val = datasets(v, opts["data"], opts["val_images"])
    mr.DETECTOR_PROFILES["sizing"] = dataclasses.replace(mr.DETECTOR_PROFILES["tiny"], **v["profile"])
    torch.manual_seed(seed)
    model = mr.build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=train.split.num_classes,
                               profile="sizing", min_size=v["image_size"], max_size=v["image_size"])
    init_scratch(model)
    if v["init"] == "pretrained":
        load_backbone(model, opts["weights"])
    optimizer = build_sgd(model, lr=v["lr"], momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    bf16 = use_bf16("auto", torch.device("cpu"))
    points = {images // v["batch"]: images for images in opts["images"]}
    sampler = IterationBatchSampler(len(train), v["batch"], seed=seed, start_iter=0, max_iter=max(points))
    evals, train_s, start = {}, 0.0, time.perf_counter()
    model.train()
    tick = time.perf_counter()
    solver = SolverConfig(base_lr=v["lr"], warmup_iters=v["warmup"])  # no LR drop within the run
    schedule = Schedule(max_iter=max(points), milestones=(), warmup_iters=v["warmup"])
    for it, (images, targets) in enumerate(DataLoader(train, batch_sampler=sampler, collate_fn=collate), 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it - 1, schedule, solver)
        train_step(model, images, targets, optimizer, bf16=bf16)
        if it in points:
            train_s += time.perf_counter() - tick
            m = evaluate(model, val)
            evals[points[it]] = {k: m[k] for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP")}
            evals[points[it]]["train_s"] = train_s
            model.train()
            tick = time.perf_counter()
    text = ", ".join(f"{e['bbox_AP']:.1f} (AP50 {e['bbox_AP50']:.1f}) @{n}" for n, e in evals.items())
    print(f"  {name:11s} seed {seed}: bbox AP {text}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"variant": name, "seed": seed, "settings": v, "evals": evals, "bf16": bf16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="base", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--images", default="2400,4800", help="training images at which to evaluate")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--data", type=Path, default=Path("data/sizing"), help="generated sets (made if missing)")
    p.add_argument("--weights", default=None, help="backbone for `pretrained` variants (default: the "
                                                    "default study's stand-in, made in runs/ if missing)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    opts = {"images": sorted(int(x) for x in args.images.split(",")), "data": args.data.resolve(),
            "val_images": args.val_images, "weights": args.weights}
    if any(settings(n)["init"] == "pretrained" for n in names) and args.weights is None:
        from study.config import load_study
        from study.tune.weights import study_weights

        opts["weights"] = study_weights(load_study(Path(__file__).parents[1] / "search_spaces" / "default.yaml"),
                                        Path(__file__).parents[1] / "runs")
    for n in names:  # generate each set once, before the workers race to
        datasets(settings(n), opts["data"], args.val_images)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(n, s, opts) for n in names for s in seeds]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(run, jobs, chunksize=1)
    print(f"\nbbox AP after N training images (seeds {', '.join(map(str, seeds))}; mean)")
    print(f"{'variant':12s} " + "  ".join(f"{f'@{n}':>20s}" for n in opts["images"]) + "   s per 1,000 images")
    for n in names:
        rows = [r for r in results if r["variant"] == n]
        cells = []
        for images in opts["images"]:
            aps = [r["evals"][images]["bbox_AP"] for r in rows]
            cells.append(f"{' / '.join(f'{a:.1f}' for a in aps)} ({statistics.fmean(aps):.1f})".rjust(20))
        last = max(opts["images"])
        speed = statistics.fmean(r["evals"][last]["train_s"] for r in rows) / last * 1000
        print(f"{n:12s} " + "  ".join(cells) + f"   {speed:.0f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "base": BASE,
                                         "variants": {n: VARIANTS[n] for n in names}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
