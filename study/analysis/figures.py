"""The study's figures (matplotlib, PNG): learning curves, the paired gap curve, final AP vs
schedule, samples seen, LR sensitivity. Each function takes `load_results`' frame and writes one file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from study.analysis.tables import at_best_lr, final_table, finished_finals, lr_sensitivity, samples_seen  # noqa: E402

COLORS = {"scratch": "tab:blue", "pretrained": "tab:orange"}
STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]


def _sizes(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["size"]))


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(df: pd.DataFrame, out: Path, *, milestones: dict[float, list[int]] | None = None,
                    metric: str = "bbox_AP") -> Path:
    """bbox AP vs iteration, one panel per training-set size: scratch (blue) vs pretrained
    (orange), one line style per schedule at the best LR, a thin line per finished seed and the
    mean bold, LR drops marked with a tick on the mean (the paper's Fig. 1/4/5)."""
    rows = at_best_lr(df, metric)
    rows = rows[rows["trial"].isin(finished_finals(df)["trial"]) & rows[metric].notna()]
    sizes = _sizes(df)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False, sharey=True)
    schedules = sorted(rows["schedule"].unique())
    for ax, size in zip(axes[0], sizes):
        for (init, schedule), part in rows[rows["size"] == size].groupby(["init", "schedule"]):
            style = STYLES[schedules.index(schedule) % len(STYLES)]
            for _, seed in part.groupby("seed"):
                seed = seed.sort_values("iteration")
                ax.plot(seed["iteration"], seed[metric], color=COLORS.get(init), linestyle=style,
                        linewidth=0.7, alpha=0.35)
            curve = part.groupby("iteration")[metric].mean()
            ax.plot(curve.index, curve.values, color=COLORS.get(init), linestyle=style, marker=".",
                    linewidth=2, label=f"{init} {schedule:g}x (mean of {part['seed'].nunique()})")
            for drop in (milestones or {}).get(schedule, []):
                y = curve.reindex(curve.index.union([drop])).interpolate("index").get(drop)
                if y is not None and pd.notna(y):
                    ax.plot([drop], [y], marker="v", color=COLORS.get(init), markersize=6)
        ax.set_title(f"{size} training images")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (val)")
    axes[0][-1].legend(fontsize=8, ncol=2, title="thin: one seed; ▼ LR drop" if milestones else "thin: one seed",
                       title_fontsize=8)
    return _save(fig, out)


def gap_curve(gaps: pd.DataFrame, out: Path, *, margins: dict[str, float] | None = None,
              metric: str = "bbox_AP") -> Path:
    """The paired gap pretrained - scratch vs iteration on each size's longest schedule, with its
    95% interval as a band (where there are two seeds or more), a zero line and the catch-up
    margin of each size (`margins`): the picture of "faster early, then caught up". `gaps` is
    `claims.paired_gaps`."""
    sizes = list(dict.fromkeys(gaps["size"]))
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5.5 * max(1, len(sizes)), 4.0), squeeze=False,
                             sharey=True)
    for ax, size in zip(axes[0], sizes):
        part = gaps[gaps["size"] == size]
        part = part[part["schedule"] == part["schedule"].max()].sort_values("iteration")
        ax.axhline(0, color="black", linewidth=0.8)
        margin = (margins or {}).get(size)
        if margin is not None:
            ax.axhspan(-margin, margin, color="tab:green", alpha=0.08, label=f"±{margin:g} AP margin")
        ax.fill_between(part["iteration"], part["ci_low"], part["ci_high"], color="tab:purple", alpha=0.25,
                        label="95% interval (paired seeds)")
        low, high = int(part["n_seeds"].min()), int(part["n_seeds"].max())
        ax.plot(part["iteration"], part["gap"], color="tab:purple", marker="o", linewidth=2,
                label=f"gap, {part['schedule'].max():g}x, {low if low == high else f'{low}-{high}'} seed(s)")
        ax.set_title(f"{size} training images")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"pretrained - scratch, {metric}")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, out)


def final_vs_schedule(df: pd.DataFrame, out: Path, metric: str = "bbox_AP") -> Path:
    """Final AP vs schedule per training-set size, mean ± spread over seeds at the best LR."""
    table = final_table(df, metric)
    sizes = _sizes(df)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for init, part in table[table["size"] == size].groupby("init"):
            part = part.sort_values("schedule")
            ax.errorbar(part["schedule"], part["mean"], yerr=part["spread"], color=COLORS.get(init),
                        marker="o", capsize=3, label=init)
        ax.set_title(f"{size} training images")
        ax.set_xlabel("schedule (x 1x)")
        ax.set_xticks(sorted(table["schedule"].unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"final {metric}")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, out)


def samples_bars(df: pd.DataFrame, out: Path, metric: str = "bbox_AP") -> Path:
    """Images, instances and pixels seen per arm at the longest schedule of the largest size,
    split into pre-training and detection training (the paper's Fig. 2), log scale."""
    seen = samples_seen(df, metric)
    size = _sizes(df)[0]
    seen = seen[(seen["size"] == size) & (seen["schedule"] == seen["schedule"].max())]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, kind in zip(axes, ("images", "instances", "pixels")):
        inits = list(seen["init"])
        detection = seen[f"{kind}_seen"].to_numpy()
        pre = seen.get(f"pretrain_{kind}_seen", pd.Series([0] * len(seen))).to_numpy()
        ax.bar(inits, pre, color="tab:gray", label="pre-training")
        ax.bar(inits, detection, bottom=pre, color=[COLORS.get(i) for i in inits], label="detection training")
        ax.set_yscale("log")
        ax.set_title(f"{kind} seen")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"samples seen, {size} training images, {seen['schedule'].max():g}x", fontsize=10)
    return _save(fig, out)


def lr_curves(df: pd.DataFrame, out: Path, metric: str = "bbox_AP") -> Path:
    """Final AP vs base LR (log scale) per training-set size, one line per (init, schedule)."""
    sens = lr_sensitivity(df, metric)
    sizes = _sizes(df)
    schedules = sorted(sens["schedule"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for (init, schedule), part in sens[sens["size"] == size].groupby(["init", "schedule"]):
            part = part.sort_values("base_lr")
            ax.plot(part["base_lr"], part["mean"], color=COLORS.get(init), marker="o",
                    linestyle=STYLES[schedules.index(schedule) % len(STYLES)], label=f"{init} {schedule:g}x")
        ax.set_xscale("log")
        ax.set_title(f"{size} training images")
        ax.set_xlabel("base LR")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"final {metric}")
    axes[0][-1].legend(fontsize=8, ncol=2)
    return _save(fig, out)
