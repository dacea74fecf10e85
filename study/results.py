"""A study's results as pandas, read from the trials' own metric logs (no Ray needed).

Every trial writes `trials/<trial>/metrics.jsonl` itself (append-only, fsync'ed), so these files
are the complete history even when Tune lost rows to a crash (RAY_NOTES §4). A branch's file
starts with the rows it shares with its trunk, so each schedule reads as a separate run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.plan import size_label
from study.trial import read_metrics


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """Every reported row of every trial of a study run, one row per (trial, iteration).

    Columns: trial, size ('full', '1000', 'frac0.1'), the trial's factors (init, schedule,
    train_images, data_fraction, base_lr, seed), iteration, status, lr, losses, bbox_/segm_ AP
    metrics (0-100), images_per_s and samples seen (images, instances, pixels, pre-training's).
    """
    trials = Path(run_dir) / "trials"
    if not trials.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a study run: it has no trials/ folder")
    frames = []
    for folder in sorted(p for p in trials.iterdir() if p.is_dir()):
        rows = read_metrics(folder)
        if rows:
            frames.append(pd.DataFrame(rows).assign(trial=folder.name))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["size"] = [_size(n, f) for n, f in zip(df["train_images"], df["data_fraction"])]
    first = ["trial", "init", "schedule", "size", "base_lr", "seed", "iteration", "status"]
    return df[first + [c for c in df.columns if c not in first]]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last row of each trial (its final evaluation, or where it diverged)."""
    return df.sort_values("iteration").groupby("trial", sort=False).tail(1).sort_values(
        ["init", "size", "schedule", "base_lr", "seed"]).reset_index(drop=True)


def _size(train_images: object, data_fraction: object) -> str:
    if data_fraction is not None and pd.notna(data_fraction):
        return size_label((None, float(data_fraction)))  # type: ignore[arg-type]
    return size_label(("full" if train_images == "full" else int(train_images), None))  # type: ignore[call-overload]
