"""`study analyze`: the report of a study run, as Markdown and as one self-contained HTML file.

It states the findings in sentences derived from the numbers, then the tables, the figures, what
the run used (hardware, time) and its config. It works on a run still in progress: the header
says how many of the planned trials have finished, and only finished trials enter the numbers.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from study import layout
from study.analysis import figures, tables
from study.analysis.results import export_results, final_rows, load_results, run_config
from study.config import study_from_dict
from study.plan.budget import plan_study
from study.plan.schedule import schedule_for


def write_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 tol: float = 0.5) -> tuple[Path, str]:
    """Write report.md, report.html, results.parquet/.csv and the figures; returns report.md's
    path and the short summary (`tables.summary`, same results, same tolerance)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = load_results(run_dir)
    export_results(df, out)
    raw = run_config(run_dir)
    cfg = study_from_dict(raw) if raw else None
    unit = cfg.solver.unit_iters if cfg else None
    info = layout.read_run_info(run_dir)

    finals = final_rows(df) if len(df) else df
    ended = int((finals["status"] != "running").sum()) if len(df) else 0
    planned = plan_study(cfg).trials if cfg else None
    state = ("complete" if planned is not None and ended >= planned and ended == len(finals)
             else f"partial: {ended} of {planned if planned is not None else '?'} planned trials ended")
    sections: list[tuple[str, Any]] = []  # (title, str | DataFrame | Path)
    if df.empty:
        sections.append(("Findings", "No trial has reported yet."))
    else:
        table = tables.final_table(df)
        sections.append(("Findings", tables.findings(df, unit, tol=tol)))
        for size, pivot in tables.table1(table).items():
            sections.append((f"Final bbox AP, {size} training images (mean ± half the range over "
                             "seeds, at each cell's best LR)", pivot.reset_index()))
        sections += [
            ("Best LR and seeds per cell", table),
            (f"Catch-up (tolerance {tol:g} AP or the seed spread)", tables.catch_up(table, tol)),
            ("Early-convergence gap (pretrained - scratch)",
             tables.early_gap(df, unit) if unit else pd.DataFrame()),
            ("Overfitting (final AP past the peak schedule)", tables.overfitting(table, tol)),
            ("LR sensitivity (final bbox AP per LR)", tables.lr_sensitivity(df)),
            ("Samples seen (pre-training included)", tables.samples_seen(df)),
            ("Problems (not in any average)", tables.problems(df)),
        ]
        milestones = ({s: list(schedule_for(s, cfg.solver).milestones) for s in cfg.grid.schedule}
                      if cfg else None)
        sections += [
            ("Learning curves", figures.learning_curves(df, out / "learning_curves.png", milestones=milestones)),
            ("Final AP vs schedule", figures.final_vs_schedule(df, out / "final_vs_schedule.png")),
            ("Samples seen", figures.samples_bars(df, out / "samples_seen.png")),
            ("LR sensitivity", figures.lr_curves(df, out / "lr_sensitivity.png")),
        ]
    sections.append(("Run", _run_text(info, df)))
    sections.append((f"Config ({layout.STUDY_FILE})", (run_dir / layout.STUDY_FILE).read_text()
                     if (run_dir / layout.STUDY_FILE).is_file() else "not saved"))
    title = f"Study {raw.get('name', run_dir.name)}: scratch vs pretrained ({state})"
    (out / "report.md").write_text(_markdown(title, sections))
    (out / "report.html").write_text(_html(title, sections))
    return out / "report.md", tables.summary(df, unit, tol=tol)


def _run_text(info: layout.RunInfo | None, df: pd.DataFrame) -> str:
    lines = []
    if info is not None:
        lines.append(f"{info.started} to {info.finished}: {info.seconds:.0f} s wall")
        lines += [f"{k}: {v}" for k, v in info.machine.items()]
    else:
        lines.append(f"hardware and time not recorded (no {layout.RUN_INFO}: run it with `study run`)")
    if len(df) and "images_per_s" in df:
        lines.append(f"training throughput: {df['images_per_s'].median():.1f} images/s per trial (median)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def _markdown(title: str, sections: list[tuple[str, Any]]) -> str:
    parts = [f"# {title}\n"]
    for name, body in sections:
        parts.append(f"## {name}\n")
        if isinstance(body, list):
            parts.append("\n".join(f"- {line}" for line in body) + "\n")
        elif isinstance(body, pd.DataFrame):
            if body.empty:
                parts.append("(none)\n")
                continue
            cols = list(body.columns)
            parts.append("| " + " | ".join(map(str, cols)) + " |")
            parts.append("| " + " | ".join("---" for _ in cols) + " |")
            parts += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body.itertuples(index=False)]
            parts.append("")
        elif isinstance(body, Path):
            parts.append(f"![{name}]({body.name})\n")
        else:
            parts.append(f"```\n{body}\n```\n")
    return "\n".join(parts)


def _html(title: str, sections: list[tuple[str, Any]]) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "pre{background:#f6f6f6;padding:8px}</style>", f"<h1>{html.escape(title)}</h1>"]
    for name, body in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if isinstance(body, list):
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in body) + "</ul>")
        elif isinstance(body, pd.DataFrame):
            parts.append("<p>(none)</p>" if body.empty else body.to_html(index=False, float_format=_fmt))
        elif isinstance(body, Path):
            data = base64.b64encode(body.read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<pre>{html.escape(str(body))}</pre>")
    return "\n".join(parts)
