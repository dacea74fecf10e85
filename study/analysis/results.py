"""A study's results as pandas, read from the trials' own metric logs (no Ray needed).

Every trial writes its own metric log (`study.layout`; append-only, fsync'ed), so these files
are the complete history even when Tune lost rows to a crash (a restored Tune experiment keeps
only what it had checkpointed). A branch's log starts with the rows it shares with its trunk, so
each schedule reads as a separate run. A trial whose process raised leaves the failure marker:
its last row's status reads 'errored'. A trunk that successive halving stopped (`halving.json`)
pauses at a fork point: its last row's status reads 'dropped'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study import layout
from study.plan.halving import Decision
from study.plan.trials import Size, Trial

FIRST = ["trial", "init", "schedule", "size", "train_images", "base_lr", "seed", "norm", "backbone",
         "iteration", "status", "lr", "loss", "bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP",
         "segm_AP50", "segm_AP75", "images_seen", "instances_seen", "pixels_seen"]


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved study config a run saved, as plain data ({} if absent)."""
    path = Path(run_dir) / layout.STUDY_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """Every reported row of every trial of a study run, one row per (trial, evaluation).

    Columns: trial, the trial's factors (init, schedule, size as 'full' | '1000' | 'frac0.1',
    train_images, data_fraction, base_lr, seed), the model's norm and backbone, iteration,
    status (running | finished | diverged | errored | dropped), lr, losses, bbox_ and segm_ AP metrics
    (0-100), images_per_s and samples seen (images, instances, pixels; pre-training's too).
    """
    trials = Path(run_dir) / layout.TRIALS
    if not trials.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a study run: it has no {layout.TRIALS}/ folder")
    frames = []
    dropped = dropped_trunks(run_dir)
    for folder in sorted(p for p in trials.iterdir() if p.is_dir()):
        rows = layout.read_metrics(folder)
        if rows and (folder / layout.FAILED).is_file() and rows[-1]["status"] == "running":
            rows[-1] = {**rows[-1], "status": "errored"}
        if rows and folder.name in dropped and rows[-1]["status"] == "running":
            rows[-1] = {**rows[-1], "status": "dropped"}
        if rows:
            frames.append(pd.DataFrame(rows).assign(trial=folder.name))
    if not frames:
        return pd.DataFrame(columns=FIRST)
    df = pd.concat(frames, ignore_index=True)
    df["size"] = [Size.of(n, f).label for n, f in zip(df["train_images"], df["data_fraction"])]
    model = run_config(run_dir).get("model", {})
    df["norm"], df["backbone"] = model.get("norm"), model.get("backbone")
    first = [c for c in FIRST if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def read_decisions(run_dir: str | Path) -> list[Decision]:
    """Successive halving's decisions in a run folder, in the order made; [] without halving."""
    path = Path(run_dir) / layout.HALVING
    return [Decision.from_dict(d) for d in json.loads(path.read_text())] if path.is_file() else []


def dropped_trunks(run_dir: str | Path) -> set[str]:
    """The trial folders of the trunks halving stopped (a dropped LR's longest schedule)."""
    schedules = run_config(run_dir).get("grid", {}).get("schedule")
    if not schedules:
        return set()
    return {Trial(init=d.init, schedule=float(max(schedules)), base_lr=lr, seed=d.seed,  # type: ignore[arg-type]
                  size=Size.parse(d.size)).name()
            for d in read_decisions(run_dir) for lr in d.dropped}


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last row of each trial (its final evaluation, or where it diverged or stopped)."""
    return df.sort_values("iteration").groupby("trial", sort=False).tail(1).sort_values(
        ["init", "size", "schedule", "base_lr", "seed"]).reset_index(drop=True)


def export_results(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """`results.parquet` and `results.csv` in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = df.assign(train_images=df["train_images"].astype(str)) if "train_images" in df else df
    table.to_parquet(out_dir / "results.parquet", index=False)
    df.to_csv(out_dir / "results.csv", index=False)
    return out_dir / "results.parquet", out_dir / "results.csv"
