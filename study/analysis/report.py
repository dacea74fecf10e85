"""`study analyze`: the report of a study run, as Markdown and as one self-contained HTML file.

It opens with the paper's claims judged on this study's results (`study.analysis.claims`: paired
seeds, 95% intervals, a verdict each, the rule beside it; also written as `claims.json`), states
in sentences only what the intervals support, then the tables, the figures, what the run used
(hardware, time) and its config. It works on a run still in progress: the header
says how many of the planned trials have finished, and only finished trials enter the numbers.
Several runs of one study with different seeds are reported as one (`study.analysis.pooling`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study import layout
from study.analysis import claims, figures, tables
from study.analysis.next_steps import next_steps
from study.analysis.pooling import pool_runs
from study.analysis.results import export_results, final_rows, load_results, read_decisions, run_config
from study.analysis.sequential import describe, judge_study
from study.config import StudyConfig, study_from_dict
from study.errors import ConfigError
from study.plan.budget import plan_study
from study.plan.evidence import look_sizes, up_to_look
from study.plan.looks import plan_looks
from study.plan.halving import Decision
from study.plan.schedule import schedule_for


def write_report(run_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                 tol: float | None = None) -> tuple[Path, str]:
    """Write report.md, report.html, claims.json, results.parquet/.csv and the figures; returns
    report.md's path and the short summary (`summary`: the same results and verdicts). `tol`
    narrows the catch-up margin (it cannot widen it).

    Several run folders are judged as one study (`study.analysis.pooling`: the same study with
    different seeds); their report needs `out_dir`, since it belongs to none of them."""
    dirs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(d) for d in run_dir]
    if len(dirs) > 1 and out_dir is None:
        raise ConfigError("--out", "several runs pooled need a report folder of their own")
    out = Path(out_dir) if out_dir is not None else dirs[0] / layout.REPORT
    out.mkdir(parents=True, exist_ok=True)
    pooled = pool_runs(dirs) if len(dirs) > 1 else None
    df = pooled.results if pooled else load_results(dirs[0])
    export_results(df, out)
    raw = pooled.config if pooled else run_config(dirs[0])
    cfg = study_from_dict(raw) if raw else None
    found, omitted = judge_study(df, cfg, tol)
    claims.write_claims(found, out)
    eval_s = float(df["eval_s"].sum()) if "eval_s" in df else 0.0
    steps = [s.text() for s in next_steps(found, cfg, None if pooled else layout.read_run_info(dirs[0]),
                                          eval_s=eval_s)]

    finals = final_rows(df) if len(df) else df
    ended = int((finals["status"] != "running").sum()) if len(df) else 0
    reached = max((c.look or 1 for c in found), default=1)  # with evidence: the waves the study ran
    planned = plan_study(up_to_look(cfg, reached - 1)).trials_run if cfg else None
    decisions = [d for run in dirs for d in read_decisions(run)]
    state = ("complete" if planned is not None and ended >= planned and ended == len(finals)
             else f"partial: {ended} of {planned if planned is not None else '?'} planned trials ended")
    sections: list[tuple[str, Any]] = []  # (title, str | list[str] | DataFrame | Path)
    if df.empty:
        sections.append(("Findings", "No trial has reported yet."))
    else:
        sections += [
            ("The paper's claims (pretrained - scratch, bbox AP; intervals over paired seeds)",
             _claims_table(found)),
            ("Findings", _findings(found, omitted)),
            *([("Next steps (the claims this study left open)", steps)] if steps else []),
            ("How the verdicts are reached", [claims.INTERVAL_RULE, *_design(cfg)] + [
                f"{c.claim}{f' ({c.init})' if c.init else ''}, {c.size}: {c.rule}" for c in found]),
        ]
        table = tables.final_table(df)
        for size, pivot in tables.table1(table).items():
            sections.append((f"Final bbox AP, {size} training images (mean ± half the range over "
                             "seeds, at each cell's best LR)", pivot.reset_index()))
        gaps = claims.paired_gaps(df)
        sections += [
            ("Best LR and seeds per cell", table),
            ("Paired gap at every evaluation (pretrained - scratch, each arm at its best LR)", gaps),
            ("LR sensitivity (final bbox AP per LR)", tables.lr_sensitivity(df)),
            ("Samples seen (pre-training included)", tables.samples_seen(df)),
            ("Problems (not in any average)", tables.problems(df)),
        ]
        if decisions:
            sections.append(("Successive halving: LRs dropped early (never trained to the longer "
                             "schedules; assumes the LR ranking at the shorter schedule holds at the longer)",
                             tables.halving(decisions)))
        milestones = ({s: list(schedule_for(s, cfg.solver).milestones) for s in cfg.grid.schedule}
                      if cfg else None)
        margins = {c.size: c.margin for c in found if c.claim == "catches_up" and c.margin is not None}
        sections += [
            ("Learning curves", figures.learning_curves(df, out / "learning_curves.png", milestones=milestones)),
            ("Paired gap vs iteration", figures.gap_curve(gaps, out / "gap_curve.png", margins=margins)),
            ("Final AP vs schedule", figures.final_vs_schedule(df, out / "final_vs_schedule.png")),
            ("Samples seen", figures.samples_bars(df, out / "samples_seen.png")),
            ("LR sensitivity", figures.lr_curves(df, out / "lr_sensitivity.png")),
        ]
    if pooled:
        sections.append(("Runs", [line + "." for line in pooled.describe().splitlines()] + [
            f"{name}: " + _run_text(info, df[df["run"] == name]).replace("\n", "; ")
            for name, info in pooled.infos.items()]))
        sections.append(("Config (the runs' shared study, their seeds joined)", yaml.safe_dump(raw, sort_keys=False)))
    else:
        sections.append(("Run", _run_text(layout.read_run_info(dirs[0]), df)))
        sections.append((f"Config ({layout.STUDY_FILE})", (dirs[0] / layout.STUDY_FILE).read_text()
                         if (dirs[0] / layout.STUDY_FILE).is_file() else "not saved"))
    state += f", {len(dirs)} runs pooled" if pooled else ""
    title = f"Study {raw.get('name', dirs[0].name)}: scratch vs pretrained ({state})"
    (out / "report.md").write_text(_markdown(title, sections))
    (out / "report.html").write_text(_html(title, sections))
    text = _summary(df, found, omitted, decisions=decisions, steps=steps)
    return out / "report.md", (f"{pooled.describe()}\n\n{text}" if pooled else text)


def summary(df: pd.DataFrame, cfg: StudyConfig | None = None, tol: float | None = None) -> str:
    """The text `study run` and `study analyze` print: the verdicts first, then the final-AP tables."""
    return _summary(df, *judge_study(df, cfg, tol))


def _summary(df: pd.DataFrame, found: list[claims.Claim], omitted: list[str], metric: str = "bbox_AP",
             decisions: list[Decision] | None = None, steps: Sequence[str] = ()) -> str:
    if df.empty:
        return "no results yet"
    parts = [f"the paper's claims (pretrained - scratch, {metric}):", f"  {claims.INTERVAL_RULE}"]
    rows = _claims_table(found).drop(columns="paper (COCO)")  # in the report; too wide for a terminal
    parts += ["  " + line for line in (rows.to_string(index=False).splitlines() if len(rows) else ["(none)"])]
    parts.append("")
    parts += [f"- {line}" for line in _findings(found, omitted)]
    parts.append("")
    parts.append(f"final {metric} at each cell's best LR (mean ± half the range over seeds):")
    for size, pivot in tables.table1(tables.final_table(df, metric)).items():
        parts.append(f"  {size} training images")
        parts += ["    " + line for line in pivot.to_string().splitlines()]
    for d in decisions or []:
        if d.dropped:
            parts.append(f"- Halving dropped LR {', '.join(f'{v:g}' for v in d.dropped)} of {d.init}, "
                         f"{d.size} images, seed {d.seed} after {d.schedule:g}x (kept "
                         f"{', '.join(f'{v:g}' for v in d.kept) or 'none'}).")
    bad = tables.problems(df)
    if len(bad):
        parts.append(f"- Not in the means: {len(bad)} trial(s) did not finish: " + "; ".join(
            f"{r['trial']} {r['status']} at iteration {r['iteration']}" for _, r in bad.iterrows()) + ".")
    if steps:
        parts += ["", "next steps (the claims this study left open):"] + [f"- {line}" for line in steps]
    return "\n".join(parts)


def _claims_table(found: list[claims.Claim]) -> pd.DataFrame:
    """claim | size | where | the paper on COCO | this study's gap (interval) | seeds | verdict, and
    for a sequential design the look each claim was settled (or left open) at."""
    looks = any(c.looks for c in found)
    columns = ["claim", "size", "where", "paper (COCO)", "this study: gap (interval)", "seeds",
               *(["look"] if looks else []), "verdict"]
    return pd.DataFrame([{"claim": c.claim + (f" ({c.init})" if c.init else ""), "size": c.size,
                          "where": claims.where(c), "paper (COCO)": c.paper,
                          "this study: gap (interval)": claims.interval_text(c), "seeds": c.n_seeds,
                          "look": f"{c.look} of {c.looks} ({claims.level_text(c.level)})" if c.looks else "",
                          "verdict": c.verdict} for c in found], columns=columns)


def _design(cfg: StudyConfig | None) -> list[str]:
    """The sequential design's looks, for a study with `evidence`."""
    if cfg is None or cfg.evidence is None:
        return []
    looks = plan_looks(look_sizes(cfg), cfg.evidence.spending)
    return [f"Seeds added while a claim is open (evidence): {describe(looks, cfg.evidence.spending)}"]


def _findings(found: list[claims.Claim], omitted: list[str]) -> list[str]:
    """One sentence per claim (a claim is stated only when SUPPORTED or CONTRADICTED), then what
    could not be judged, once each."""
    one = [claims.ONE_SEED + "."] if any(c.n_seeds == 1 for c in found) else []
    more = [claims.MORE_SEEDS + "."] if any(c.verdict == "INCONCLUSIVE" and c.n_seeds >= 2 for c in found) else []
    return [claims.sentence(c) for c in found] + one + more + [f"Not judged: {line}." for line in omitted]


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
            parts.append("<p>(none)</p>" if body.empty else body.to_html(index=False, float_format=_fmt, na_rep=""))
        elif isinstance(body, Path):
            data = base64.b64encode(body.read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<pre>{html.escape(str(body))}</pre>")
    return "\n".join(parts)
