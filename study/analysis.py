"""Convergence analysis of a study's results (pure pandas): the paper's comparison per cell.

`summary` is what `study run` prints at the end: for each training-set size and schedule, the
final bbox AP of scratch and pretrained (mean over seeds at each cell's best LR, with the spread
over seeds), and the same comparison at the first evaluation, where the paper sees pre-training's
head start.
"""

from __future__ import annotations

import pandas as pd

from study.results import final_rows


def best_lr(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per (init, size, schedule): the LR with the highest final `metric` averaged over seeds."""
    final = final_rows(df)
    means = final.groupby(["init", "size", "schedule", "base_lr"], as_index=False)[metric].mean()
    means = means.dropna(subset=[metric])
    best = means.loc[means.groupby(["init", "size", "schedule"])[metric].idxmax()]
    return best[["init", "size", "schedule", "base_lr"]].reset_index(drop=True)


def at_best_lr(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """The rows of `df` that belong to each cell's best LR."""
    return df.merge(best_lr(df, metric), on=["init", "size", "schedule", "base_lr"])


def compare(rows: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per (size, schedule): mean and spread ((max - min) / 2) over seeds of `metric` for each
    init, and the gap pretrained - scratch. `rows` holds one row per (init, size, schedule, seed)."""
    stats = rows.groupby(["size", "schedule", "init"])[metric].agg(
        mean="mean", spread=lambda v: (v.max() - v.min()) / 2, seeds="count").unstack("init")
    stats.columns = [f"{init}_{stat}" for stat, init in stats.columns]
    if {"scratch_mean", "pretrained_mean"} <= set(stats.columns):
        stats["gap"] = stats["pretrained_mean"] - stats["scratch_mean"]
    return stats.reset_index()


def summary(df: pd.DataFrame, metric: str = "bbox_AP") -> str:
    """The text `study run` prints: final and first-evaluation comparisons at each cell's best LR."""
    if df.empty:
        return "no results yet"
    rows = at_best_lr(df, metric)
    final = final_rows(rows)
    first_iter = rows.loc[rows[metric].notna(), "iteration"].min()
    first = (rows[rows["iteration"] == first_iter]  # the same row in every schedule: take the longest's
             .sort_values("schedule", ascending=False).drop_duplicates(["init", "size", "seed"])
             .assign(schedule="all"))
    diverged = int((final_rows(df)["status"] == "diverged").sum())
    parts = [f"final {metric} at each cell's best LR (mean over seeds ± half their range):",
             _table(compare(final, metric)),
             f"\nat the first evaluation (iteration {first_iter}; the longest schedule's row), {metric}:",
             _table(compare(first, metric)),
             f"and the mean training loss over iterations 1-{first_iter} (lower is better):",
             _table(compare(first, "loss"))]
    if diverged:
        parts.append(f"\n{diverged} trial(s) diverged (status 'diverged'; see load_results)")
    return "\n".join(parts)


def _table(stats: pd.DataFrame) -> str:
    lines = [f"  {'size':>8} {'schedule':>8}   {'scratch':>13}   {'pretrained':>13}   {'gap':>6}"]
    for _, r in stats.iterrows():
        schedule = str(r["schedule"]) if isinstance(r["schedule"], str) else f"{float(r['schedule']):g}x"

        def cell(init: str) -> str:
            if f"{init}_mean" not in r or pd.isna(r[f"{init}_mean"]):
                return f"{'-':>13}"
            return f"{r[f'{init}_mean']:6.2f} ± {r[f'{init}_spread']:4.2f}"

        gap = f"{r['gap']:+6.2f}" if "gap" in r and pd.notna(r["gap"]) else f"{'-':>6}"
        lines.append(f"  {r['size']:>8} {schedule:>8}   {cell('scratch')}   {cell('pretrained')}   {gap}")
    return "\n".join(lines)
