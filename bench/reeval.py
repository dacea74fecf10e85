"""How much of a study's seed spread is the val set's? Re-evaluate a finished run's final models
on a larger val set drawn from the same generator, and compare the paired per-seed gaps
(pretrained - scratch) on the study's own val images with those on the fresh ones.

The synthetic generator is a pure function of (seed, split, index), so the first `val_images`
of the larger set are the study's own val images: their AP must match the run's metrics (a
check that the re-evaluation is the study's), and the images past them are new draws.

    python bench/reeval.py <storage>/<name> --val-images 2000 --schedules 3 --out docs/results/reeval.json

Only each trial's final checkpoint (`checkpoint.pt`) is evaluated, in fp32 on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.weight_files import load_state_file
from study import layout
from study.analysis.claims import t_interval
from study.config import load_study
from study.data.coco import InstanceDataset, load_coco
from study.data.synthetic import build_once, write_split
from study.train.build import build_detector
from study.train.steps import coco_metrics, predict


def final_trials(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(trial folder, last metrics row) of every trial that finished its schedule."""
    out = []
    for trial_dir in sorted((run_dir / layout.TRIALS).iterdir()):
        rows = layout.read_metrics(trial_dir)
        if rows and rows[-1].get("status") == "finished" and (trial_dir / layout.CHECKPOINT).is_file():
            out.append((trial_dir, rows[-1]))
    return out


def paired(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per (size, schedule): the per-seed gaps pretrained - scratch of `key`, their sd and interval."""
    cells: dict[tuple[Any, Any], dict[int, dict[str, float]]] = {}
    for r in rows:
        cells.setdefault((r["size"], r["schedule"]), {}).setdefault(r["seed"], {})[r["init"]] = r[key]
    out = {}
    for (size, schedule), seeds in sorted(cells.items()):
        gaps = [v["pretrained"] - v["scratch"] for v in seeds.values() if len(v) == 2]
        if len(gaps) >= 2:
            iv = t_interval(gaps)
            out[f"{size} {schedule}x"] = {"gaps": [round(g, 2) for g in gaps], "mean": round(iv.mean, 2),
                                          "sd": round(iv.sd, 2),
                                          "ci": [round(iv.low, 2), round(iv.high, 2)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--schedules", default="", help="comma-separated schedules to evaluate (default: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_study(args.run_dir / layout.STUDY_FILE)
    own = cfg.data.synthetic.val_images
    spec = dataclasses.replace(cfg.data.synthetic, val_images=args.val_images)
    data = Path(tempfile.gettempdir()) / "reeval_val"  # made once per spec, as the study's data is
    build_once(data, spec, lambda: write_split(data, "val", args.val_images, spec), stale=("val/[0-9]*.png",))
    val = InstanceDataset(load_coco(data / "val.json", data / "val"))
    ids = list(val.image_ids)
    rows = []
    wanted = {float(s) for s in args.schedules.split(",") if s}
    for trial_dir, last in final_trials(args.run_dir):
        if wanted and float(last["schedule"]) not in wanted:
            continue
        tick = time.perf_counter()
        model = build_detector(cfg, num_classes=len(val.split.category_ids))
        model.load_state_dict(load_state_file(trial_dir / layout.CHECKPOINT)["model"])
        results = predict(model, val)
        own_ap = coco_metrics(val, results, image_ids=ids[:own])["bbox_AP"]
        new_ap = coco_metrics(val, results, image_ids=ids[own:])["bbox_AP"]
        all_ap = coco_metrics(val, results)["bbox_AP"]
        row = {"trial": trial_dir.name, "init": last["init"], "schedule": last["schedule"],
               "size": last["train_images"], "seed": last["seed"],
               "run_AP": last["bbox_AP"], "own_AP": own_ap, "new_AP": new_ap, "all_AP": all_ap}
        rows.append(row)
        print(f"{row['trial']}: run {row['run_AP']:.1f}, own {own} {own_ap:.1f}, new {len(ids) - own} "
              f"{new_ap:.1f}, all {all_ap:.1f} ({time.perf_counter() - tick:.0f} s)", flush=True)
    summary = {"run": str(args.run_dir), "own_val_images": own, "val_images": args.val_images,
               "rows": rows, **{f"gaps_{k}": paired(rows, f"{k}_AP") for k in ("run", "own", "new", "all")}}
    for k in ("own", "new", "all"):
        print(k, json.dumps(summary[f"gaps_{k}"]))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
