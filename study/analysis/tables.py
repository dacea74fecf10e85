"""Convergence analyses of a study's results: pure functions, DataFrame in, DataFrame out.

The input is `study.analysis.results.load_results(run_dir)`: one row per (trial, evaluation). Only
finished trials enter means; diverged, errored and unfinished trials are listed by `problems`
and never averaged in (a cell whose seed diverged shows fewer seeds instead). "Spread" is half
the range over seeds. Every comparison is at each cell's best LR (highest final mean over seeds).

- `final_table`: final AP per (size, init, schedule) (the paper's Table 1, `table1` pivots it);
- `catch_up`: per size, the smallest schedule at which scratch reaches the best pretrained AP
  within a tolerance, or none;
- `early_gap`: pretrained - scratch AP at fixed fractions of the 1x schedule;
- `overfitting`: arms whose AP falls past a peak schedule (the paper's 10k pretrained peak);
- `lr_sensitivity`: final AP per LR in every cell;
- `samples_seen`: images, instances and pixels seen, pre-training included (the paper's Fig. 2);
- `summary` and `findings`: the same numbers as text.
"""

from __future__ import annotations

import math

import pandas as pd

from study.analysis.results import final_rows

CELL = ["size", "init", "schedule"]


def finished_finals(df: pd.DataFrame) -> pd.DataFrame:
    """The final row of every finished trial."""
    final = final_rows(df)
    return final[final["status"] == "finished"].reset_index(drop=True)


def _over_seeds(rows: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    return (rows.groupby(keys)[metric]
            .agg(mean="mean", spread=lambda v: (v.max() - v.min()) / 2, seeds="count")
            .reset_index())


def lr_sensitivity(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per cell and LR: final `metric` mean, spread and seeds; `best` marks each cell's best LR."""
    stats = _over_seeds(finished_finals(df), [*CELL, "base_lr"], metric)
    stats["best"] = False
    if len(stats):
        stats.loc[stats.groupby(CELL)["mean"].idxmax(), "best"] = True
    return stats.sort_values([*CELL, "base_lr"]).reset_index(drop=True)


def best_lr(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per cell: the LR with the highest final `metric` averaged over (finished) seeds."""
    sens = lr_sensitivity(df, metric)
    return sens[sens["best"]][[*CELL, "base_lr"]].reset_index(drop=True)


def at_best_lr(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """The rows of `df` that belong to each cell's best LR."""
    return df.merge(best_lr(df, metric), on=[*CELL, "base_lr"])


def final_table(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per (size, init, schedule): final `metric` at the cell's best LR: base_lr, mean, spread, seeds."""
    sens = lr_sensitivity(df, metric)
    return sens[sens["best"]].drop(columns="best").reset_index(drop=True)


def table1(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """`final_table` as the paper prints it: per size, rows init, columns schedule, 'mean ± spread'."""
    out = {}
    for size, part in table.groupby("size", sort=False):
        cells = part.assign(text=[f"{m:.1f} ± {s:.1f}" for m, s in zip(part["mean"], part["spread"])])
        pivot = cells.pivot(index="init", columns="schedule", values="text")
        pivot.columns = [f"{c:g}x" for c in pivot.columns]
        out[str(size)] = pivot.reindex([i for i in ("scratch", "pretrained") if i in pivot.index])
    return out


def catch_up(table: pd.DataFrame, tol: float = 0.5) -> pd.DataFrame:
    """Per size: the smallest schedule at which scratch's final AP is within max(tol, either
    arm's seed spread) of the best pretrained result (at any schedule), or NaN if it never is."""
    rows = []
    for size, part in table.groupby("size", sort=False):
        pre, scr = part[part["init"] == "pretrained"], part[part["init"] == "scratch"]
        if pre.empty or scr.empty:
            continue
        best = pre.loc[pre["mean"].idxmax()]
        hit = None
        for _, s in scr.sort_values("schedule").iterrows():
            if s["mean"] >= best["mean"] - max(tol, best["spread"], s["spread"]):
                hit = s
                break
        top = scr.loc[scr["mean"].idxmax()]
        rows.append({"size": size, "pretrained_best": best["mean"],
                     "pretrained_best_schedule": best["schedule"],
                     "catch_up_schedule": hit["schedule"] if hit is not None else math.nan,
                     "scratch_at_catch_up": hit["mean"] if hit is not None else math.nan,
                     "scratch_best": top["mean"], "scratch_best_schedule": top["schedule"]})
    return pd.DataFrame(rows)


def early_gap(df: pd.DataFrame, unit_iters: int, fractions: tuple[float, ...] = (0.25, 0.5, 1.0),
              metric: str = "bbox_AP") -> pd.DataFrame:
    """Pretrained - scratch `metric` at fractions of the 1x schedule (the last evaluation at or
    before fraction x unit_iters), along each (size, init)'s longest schedule at its best LR,
    averaged over finished seeds."""
    rows = at_best_lr(df, metric)
    rows = rows[rows["trial"].isin(finished_finals(df)["trial"])]
    longest = rows.groupby(["size", "init"])["schedule"].transform("max")
    rows = rows[(rows["schedule"] == longest) & rows[metric].notna()]
    out = []
    for size, part in rows.groupby("size", sort=False):
        for fraction in fractions:
            target = fraction * unit_iters
            evals = part.loc[part["iteration"] <= target, "iteration"]
            if evals.empty:
                continue
            it = evals.max()
            at = part[part["iteration"] == it].groupby("init")[metric].mean()
            scratch, pretrained = at.get("scratch", math.nan), at.get("pretrained", math.nan)
            out.append({"size": size, "fraction": fraction, "iteration": int(it), "scratch": scratch,
                        "pretrained": pretrained, "gap": pretrained - scratch})
    return pd.DataFrame(out)


def overfitting(table: pd.DataFrame, tol: float = 0.5) -> pd.DataFrame:
    """Per (size, init): the schedule with the highest final AP and how far the longest schedule
    falls below it; `degrades` when the fall exceeds max(tol, the seed spreads)."""
    rows = []
    for (size, init), part in table.groupby(["size", "init"], sort=False):
        part = part.sort_values("schedule")
        peak, last = part.loc[part["mean"].idxmax()], part.iloc[-1]
        fall = peak["mean"] - last["mean"]
        rows.append({"size": size, "init": init, "peak_schedule": peak["schedule"], "peak": peak["mean"],
                     "last_schedule": last["schedule"], "last": last["mean"], "fall": fall,
                     "degrades": bool(fall > max(tol, peak["spread"], last["spread"]))})
    return pd.DataFrame(rows)


def samples_seen(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per (size, init, schedule) at the best LR: images, instances and pixels seen in detection
    training, in pre-training, and in all (the paper's Fig. 2), from the final rows."""
    final = finished_finals(df).merge(best_lr(df, metric), on=[*CELL, "base_lr"])
    kinds = ("images", "instances", "pixels")
    cols = [f"{k}_seen" for k in kinds] + [f"pretrain_{k}_seen" for k in kinds]
    out = final.groupby(CELL)[[c for c in cols if c in final.columns]].mean().reset_index()
    for k in kinds:
        out[f"total_{k}_seen"] = out[f"{k}_seen"] + out.get(f"pretrain_{k}_seen", 0)
    return out


def problems(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that did not finish: diverged, errored or still running, with where they stopped."""
    final = final_rows(df)
    bad = final[final["status"] != "finished"]
    return bad[["trial", "status", "iteration", *CELL, "base_lr", "seed"]].reset_index(drop=True)


def findings(df: pd.DataFrame, unit_iters: int | None = None, metric: str = "bbox_AP",
             tol: float = 0.5) -> list[str]:
    """The analyses as sentences, derived from the numbers."""
    table = final_table(df, metric)
    out = []
    for _, r in catch_up(table, tol).iterrows():
        if not math.isnan(r["catch_up_schedule"]):
            out.append(f"On {r['size']} training images, scratch catches up with pretrained at "
                       f"{r['catch_up_schedule']:g}x: {r['scratch_at_catch_up']:.1f} vs "
                       f"{r['pretrained_best']:.1f} {metric} (pretrained's best, at "
                       f"{r['pretrained_best_schedule']:g}x; tolerance {tol:g} AP or the seed spread).")
        else:
            out.append(f"On {r['size']} training images, scratch does not catch up: its best is "
                       f"{r['scratch_best']:.1f} {metric} at {r['scratch_best_schedule']:g}x against "
                       f"pretrained's {r['pretrained_best']:.1f} at {r['pretrained_best_schedule']:g}x.")
    gaps = early_gap(df, unit_iters, metric=metric) if unit_iters else pd.DataFrame()
    if len(gaps):
        for _, r in gaps[gaps["fraction"] == gaps["fraction"].min()].iterrows():
            how = ("is level with scratch" if abs(r["gap"]) < 0.05 else
                   f"{'leads' if r['gap'] > 0 else 'trails'} by {abs(r['gap']):.1f} {metric}")
            out.append(f"Early in training ({r['fraction']:g} of 1x, iteration {r['iteration']}), "
                       f"on {r['size']} images pretrained {how} ({r['pretrained']:.1f} vs "
                       f"{r['scratch']:.1f}).")
    for _, r in overfitting(table, tol).iterrows():
        if r["degrades"]:
            out.append(f"{r['init'].capitalize()} on {r['size']} images peaks at {r['peak_schedule']:g}x "
                       f"({r['peak']:.1f} {metric}) and falls to {r['last']:.1f} at "
                       f"{r['last_schedule']:g}x: it overfits with longer training.")
    bad = problems(df)
    if len(bad):
        counts = bad["status"].value_counts()
        out.append("Not in the averages: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                   + " trial(s) (listed under problems).")
    return out


def summary(df: pd.DataFrame, unit_iters: int | None = None, metric: str = "bbox_AP",
            tol: float = 0.5) -> str:
    """The short text `study run` prints at the end (and `study analyze` too)."""
    if df.empty:
        return "no results yet"
    parts = [f"final {metric} at each cell's best LR (mean ± half the range over seeds):"]
    for size, pivot in table1(final_table(df, metric)).items():
        parts.append(f"  {size} training images")
        parts += ["    " + line for line in pivot.to_string().splitlines()]
    parts.append("")
    parts += [f"- {line}" for line in findings(df, unit_iters, metric, tol)]
    bad = problems(df)
    if len(bad):
        parts.append(f"- Not in the means: {len(bad)} trial(s) did not finish: " + "; ".join(
            f"{r['trial']} {r['status']} at iteration {r['iteration']}" for _, r in bad.iterrows()) + ".")
    return "\n".join(parts)
