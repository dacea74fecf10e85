"""Convergence analyses of a study's results: pure functions, DataFrame in, DataFrame out.

The input is `study.analysis.results.load_results(run_dir)`: one row per (trial, evaluation). Only
finished trials enter means; diverged, errored and unfinished trials are listed by `problems`
and never averaged in (a cell whose seed diverged shows fewer seeds instead). "Spread" is half
the range over seeds. Every comparison is at each cell's best LR (highest final mean over seeds).

- `final_table`: final AP per (size, init, schedule) (the paper's Table 1, `table1` pivots it);
- `lr_sensitivity`: final AP per LR in every cell;
- `samples_seen`: images, instances and pixels seen, pre-training included (the paper's Fig. 2);
- `problems`: the trials that did not finish;
- `halving`: successive halving's decisions (which LRs were dropped, at which schedule).

The paper's claims, judged with paired seeds and intervals, are in `study.analysis.claims`.
"""

from __future__ import annotations


import pandas as pd

from study.analysis.results import final_rows
from study.plan.halving import Decision

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
        pivot = cells.pivot(index="init", columns="schedule", values="text").fillna("-")  # - : no finished trial
        pivot.columns = [f"{c:g}x" for c in pivot.columns]
        out[str(size)] = pivot.reindex([i for i in ("scratch", "pretrained") if i in pivot.index])
    return out


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
    """Trials that did not finish: diverged, errored or still running, with where they stopped
    (a trunk that halving dropped is not a problem: `halving` lists it)."""
    final = final_rows(df)
    bad = final[~final["status"].isin(["finished", "dropped"])]
    return bad[["trial", "status", "iteration", *CELL, "base_lr", "seed"]].reset_index(drop=True)


def halving(decisions: list[Decision]) -> pd.DataFrame:
    """One row per halving decision: the group, the schedule that ranked its LRs, each LR with
    its final bbox AP (best first), and the LRs that went on and that were dropped there (so
    never trained to the longer schedules)."""
    def lrs(values: tuple[float, ...]) -> str:
        return ", ".join(f"{v:g}" for v in values) or "-"

    return pd.DataFrame([{"size": d.size, "init": d.init, "seed": d.seed, "ranked at": f"{d.schedule:g}x",
                          "LR (bbox AP)": ", ".join(f"{lr:g} ({'-' if ap is None else f'{ap:.1f}'})"
                                                    for lr, ap in d.ranked),
                          "kept": lrs(d.kept), "dropped": lrs(d.dropped)} for d in decisions],
                        columns=["size", "init", "seed", "ranked at", "LR (bbox AP)", "kept", "dropped"])
