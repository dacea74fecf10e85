"""The paper's claims as verdicts with stated confidence: paired seeds and Student-t intervals.

Both arms of a seed share the data order and the heads' initial weights, so they are compared per
seed: d_s = AP(pretrained, seed s) - AP(scratch, seed s), each arm at its cell's best LR, only
finished trials (a seed that diverged or failed in either arm is left out, and `n_seeds` says how
many pairs remain). The gap is the mean of d_s; its 95% interval is mean ± t(0.975, n-1) x sd/sqrt(n)
(Student t with n-1 degrees of freedom). With one pair there is no interval, and every verdict is
INCONCLUSIVE. The interval is over seeds on the study's one val set: a different draw of val
images moves the gap by its own sampling error, which is not in the interval (on the synthetic
set, 200 val images and 1,800 fresh ones from the same generator gave the same three models'
gap as +0.9 and +1.7 AP).

Per training-set size:

- `faster_early`: on the longest schedule's curve, each seed's gap averaged over every evaluation
  in an early window fixed before the run (`analysis.early_window`; default from the first
  evaluation to `analysis.early_iteration`, itself half of 1x by default), then compared over the
  seeds. SUPPORTED if the interval lies above 0, CONTRADICTED if below 0. Averaging a seed's
  evaluations first keeps the seeds the units of the interval (its error rate stays the t test's)
  and takes the evaluation-to-evaluation noise out of each seed's gap.
- `catches_up`: the final gap at the longest schedule. SUPPORTED if the interval lies within
  ±margin (or wholly below -margin: scratch ahead), CONTRADICTED if it lies above +margin. The
  margin is `analysis.margin`, capped at max(1.5 AP, 5% of the pretrained arm's AP) and at a
  quarter of that AP, and `--tol` may only narrow it.
- `small_data_gap` (the smallest size, when the study has several): pretrained's final AP at its
  best schedule minus scratch's at its own. SUPPORTED above 0, CONTRADICTED below 0.
- `overfits` (each arm with two schedules or more): the fall from the arm's best shorter schedule
  to its longest. SUPPORTED if the fall's interval lies above 0, CONTRADICTED if below 0.

Anything else is INCONCLUSIVE, and the sentence says how many seeds would resolve a 1 AP gap (and,
for a directional claim whose gap is wider, how many would put the interval clear of 0 if the gap
stayed where it is).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from study import layout
from study.analysis.results import final_rows
from study.analysis.tables import at_best_lr, final_table, finished_finals
from study.plan.trials import Size

LEVEL = 0.95
INTERVAL_RULE = ("interval: mean of the paired per-seed gaps ± t(1 - a, n-1) x sd / sqrt(n), Student t with "
                 "n-1 degrees of freedom, a = 2.5% (a 95% interval) for a study judged once, less at each "
                 "look of a study that adds seeds (below); one seed gives no interval. It is over seeds on "
                 "this val set: the val images' own sampling error is not in it")
MARGIN_CAP_AP, MARGIN_CAP_FRACTION = 1.5, 0.05  # the paper's own 3x gap was 1.3 AP at ~40 AP
# ... and never more than a quarter of the AP itself: at 2 AP, "within 1.5 AP" would call arms
# equal that differ by a factor of four
MARGIN_CAP_RELATIVE = 0.25
RESOLVE_AP = 1.0  # the gap a suggested seed count would resolve
CLAIMS_FILE = "claims.json"

Verdict = Literal["SUPPORTED", "INCONCLUSIVE", "CONTRADICTED"]

# What the paper reports on COCO (Mask R-CNN + FPN + GN; bbox AP), beside each claim.
PAPER = {
    "faster_early": "R50, 2x: scratch 36.8 vs pretrained 40.3 (+3.5)",
    "catches_up": "R50, 6x: 41.3 vs 41.1 (-0.2); 3x: 39.5 vs 40.8 (+1.3)",
    "small_data_gap": "1k images: scratch 3.5 (5.4 re-tuned) vs 9.9; 3.5k: 9.3 vs 16.0",
    "overfits": "10k images: pretrained peaks at 26.0 after 60k iterations, then degrades",
}


@dataclass(frozen=True)
class Interval:
    """The mean of paired differences and its Student-t interval (NaN bounds with one pair)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """`values`' mean and its two-sided `level` Student-t interval (n-1 degrees of freedom)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def seeds_to_resolve(sd: float, gap: float = RESOLVE_AP, level: float = LEVEL, most: int = 1000) -> int | None:
    """The fewest seeds whose interval, at this spread, is narrower than ±`gap` (None past `most`)."""
    if math.isnan(sd):
        return None
    for n in range(2, most + 1):
        if stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) < gap:
            return n
    return None


@dataclass(frozen=True)
class Claim:
    """One verdict, as `claims.json` stores it."""

    claim: str
    size: str
    init: str | None  # the arm, for `overfits`
    schedule: float | None  # where it is judged (small_data_gap: pretrained's best; overfits: the longest)
    other_schedule: float | None  # what it is compared with (small_data_gap: scratch's best; overfits: the
    # arm's best shorter schedule)
    iteration: int | None
    n_seeds: int
    gap: float  # pretrained - scratch (for `overfits`: peak - longest), AP
    se: float
    ci_low: float
    ci_high: float
    margin: float | None  # for `catches_up`
    verdict: Verdict
    rule: str
    detail: str  # what else a reader needs: the catch-up schedule, seeds left out, ...
    paper: str
    window: str = ""  # the evaluations a seed's gap is the mean of, where that is more than one point
    level: float = LEVEL  # the interval's two-sided level: below 95% only at a sequential design's look
    look: int | None = None  # the look it was judged at (settled there, or the last one reached)
    looks: int | None = None  # the looks planned (None: the fixed design, judged once)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: numpy scalars as Python's, NaN as null."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            v = v.item() if isinstance(v, np.generic) else v
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
        return out


# --------------------------------------------------------------------------------------------------
# Paired data
# --------------------------------------------------------------------------------------------------


def _curves(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every evaluation of the finished trials at their cell's best LR."""
    rows = at_best_lr(df, metric)
    return rows[rows["trial"].isin(finished_finals(df)["trial"]) & rows[metric].notna()]


def _pairs(a: pd.DataFrame, b: pd.DataFrame, metric: str, on: list[str]) -> pd.DataFrame:
    """a - b per seed (and the other keys of `on`), for the seeds both have."""
    m = a.merge(b, on=[*on, "seed"], suffixes=("_a", "_b"))
    return m.assign(d=m[f"{metric}_a"] - m[f"{metric}_b"])


def paired_gaps(df: pd.DataFrame, metric: str = "bbox_AP") -> pd.DataFrame:
    """Per (size, schedule, iteration): the paired gap pretrained - scratch over the seeds both
    arms finished, at each arm's best LR: n_seeds, gap, se, ci_low, ci_high, and the arms' means."""
    c = _curves(df, metric)
    keys = ["size", "schedule", "iteration"]
    cols = [*keys, "seed", metric]
    m = _pairs(c.loc[c["init"] == "pretrained", cols], c.loc[c["init"] == "scratch", cols], metric, keys)
    out = []
    for (size, schedule, iteration), part in m.groupby(keys, sort=False):
        iv = t_interval(part["d"].tolist())
        out.append({"size": size, "schedule": schedule, "iteration": int(iteration), "n_seeds": iv.n,
                    "gap": iv.mean, "se": iv.se, "ci_low": iv.low, "ci_high": iv.high,
                    "pretrained": part[f"{metric}_a"].mean(), "scratch": part[f"{metric}_b"].mean()})
    columns = [*keys, "n_seeds", "gap", "se", "ci_low", "ci_high", "pretrained", "scratch"]
    return pd.DataFrame(out, columns=columns).sort_values(keys, key=_size_order).reset_index(drop=True)


def _size_order(column: pd.Series) -> pd.Series:
    """`sort_values` key: sizes largest first (the other columns as they are)."""
    if column.name != "size":
        return column
    ranks = {s: i for i, s in enumerate(sorted(set(column), key=_size_key))}
    return column.map(ranks)


def _size_key(label: str) -> tuple[int, float]:
    """Sorts sizes largest first: 'full', then counts, then fractions (each descending)."""
    size = Size.parse(label)
    if size.data_fraction is not None:
        return (2, -size.data_fraction)
    return (0, 0.0) if size.train_images == "full" else (1, -float(size.train_images))  # type: ignore[arg-type]


def smallest_size(sizes: Sequence[str]) -> str | None:
    """The smallest training set, or None when the sizes cannot be ordered (counts mixed with
    fractions: how many images a fraction is depends on the set) or there is only one."""
    if len(sizes) < 2:
        return None
    kinds = {_size_key(s)[0] for s in sizes if s != "full"}
    if kinds == {1, 2}:
        return None
    return max(sizes, key=_size_key)


def _left_out(df: pd.DataFrame, size: str, schedules: Sequence[float], metric: str) -> str:
    """'seed 2 (scratch 2x diverged)': the trials at the best LR that did not finish."""
    finals = final_rows(df)
    best = final_table(df, metric)[["size", "init", "schedule", "base_lr"]]
    rows = finals.merge(best, on=["size", "init", "schedule", "base_lr"])
    bad = rows[(rows["size"] == size) & rows["schedule"].isin(schedules) & (rows["status"] != "finished")]
    return "; ".join(f"seed {r.seed} left out ({r.init} {r.schedule:g}x {r.status})" for r in bad.itertuples())


# --------------------------------------------------------------------------------------------------
# The claims
# --------------------------------------------------------------------------------------------------


def _verdict(iv: Interval, *, supported: bool, contradicted: bool) -> Verdict:
    if iv.n < 2:
        return "INCONCLUSIVE"
    return "SUPPORTED" if supported else "CONTRADICTED" if contradicted else "INCONCLUSIVE"


def _claim(name: str, size: str, iv: Interval, verdict: Verdict, rule: str, *, init: str | None = None,
           schedule: float | None = None, other_schedule: float | None = None, iteration: int | None = None,
           margin: float | None = None, detail: str = "", window: str = "", level: float = LEVEL) -> Claim:
    return Claim(claim=name, size=size, init=init, schedule=schedule, other_schedule=other_schedule,
                 iteration=iteration, n_seeds=iv.n,
                 gap=iv.mean, se=iv.se, ci_low=iv.low, ci_high=iv.high, margin=margin, verdict=verdict,
                 rule=rule, detail=detail, paper=PAPER[name], window=window, level=level)


def difference_verdict(iv: Interval) -> Verdict:
    """A directional claim (a gap above 0): SUPPORTED if the interval lies above 0, CONTRADICTED
    if below. At the 95% level a true gap of 0 is SUPPORTED 2.5% of the time."""
    return _verdict(iv, supported=iv.low > 0, contradicted=iv.high < 0)


def equivalence_verdict(iv: Interval, margin: float) -> Verdict:
    """An equivalence claim (the gap within ±margin): SUPPORTED if the interval lies within it (or
    wholly below -margin), CONTRADICTED if it lies above +margin. At the 95% level a true gap of
    +margin is SUPPORTED at most 2.5% of the time (two one-sided tests)."""
    return _verdict(iv, supported=_within(iv, margin), contradicted=iv.low > margin)


def window_means(pairs: pd.DataFrame) -> pd.Series:
    """Per seed, the mean paired gap `d` over the evaluations in `pairs`; seeds that lack one of
    them are left out (a seed counts once, with every point of the window)."""
    its = pairs["iteration"].nunique()
    per_seed = pairs.groupby("seed")["d"].agg(["mean", "count"])
    return per_seed.loc[per_seed["count"] == its, "mean"]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def judge(df: pd.DataFrame, *, early_window: tuple[int, int] | None, margin: float = 1.5,
          tol: float | None = None, metric: str = "bbox_AP", last_drops: Mapping[float, int] | None = None,
          level: float = LEVEL) -> tuple[list[Claim], list[str]]:
    """Every claim this study's results can judge, and a sentence for each one they cannot.
    `early_window` holds the first and last iteration of the evaluations `faster_early` averages
    (None: unknown, not judged). `last_drops` maps each schedule to the iteration of its last LR
    drop: the claims on final AP average each seed over the evaluations after it (the final
    window; None: the last evaluation alone). `level` is the intervals' two-sided level."""
    win = Windows(early_window, dict(last_drops or {}), level)
    claims: list[Claim] = []
    omitted: list[str] = []
    if df.empty:
        return claims, ["no trial has reported yet: no claim can be judged"]
    curves = _curves(df, metric)
    if curves.empty:
        return claims, ["no trial has finished yet: no claim can be judged"]
    table = final_table(df, metric)
    inits = set(curves["init"])
    sizes = sorted(dict.fromkeys(df["size"]), key=_size_key)
    both = {"pretrained", "scratch"} <= inits
    if not both:
        lacking = "pretrained" if "pretrained" not in inits else "scratch"
        omitted.append(f"no finished {lacking} arm in this study: faster_early, catches_up and "
                       "small_data_gap compare the two arms")
    single: dict[str, list[str]] = {}  # arm -> the sizes where it finished one schedule only
    for size in sizes:
        c = curves[curves["size"] == size]
        if both:
            claims += _arm_comparisons(df, c, table, size, win, margin, tol, metric, omitted)
        for init in ("scratch", "pretrained"):
            arm = table[(table["size"] == size) & (table["init"] == init)]
            if len(arm) >= 2:
                claims.append(_overfits(df, c[c["init"] == init], arm, size, init, metric, win))
            elif len(arm) == 1:
                single.setdefault(init, []).append(size)
    for init, where in single.items():
        omitted.append(f"overfits ({init}): one finished schedule on {', '.join(where)} images: no fall to "
                       "look for")
    small = smallest_size(sizes)
    if both and small is not None:
        claims.append(_small_data_gap(df, curves[curves["size"] == small], table, small, metric, win))
    elif both:
        omitted.append("small_data_gap: " + ("one training-set size in this study: no small-data comparison"
                                              if len(sizes) < 2 else
                                              "the sizes mix image counts and fractions: no smallest"))
    return claims, omitted


@dataclass(frozen=True)
class Windows:
    """What a seed's gap averages, and the intervals' level: see `judge`."""

    early: tuple[int, int] | None
    last_drops: dict[float, int]
    level: float

    def final_seeds(self, c: pd.DataFrame, schedule: float, metric: str) -> pd.DataFrame:
        """Per seed (columns seed, `metric`): the mean of `metric` over the final window of its
        finished `schedule` trial (the evaluations after the last LR drop; without the drops, the
        last evaluation). A seed missing one of the window's evaluations is left out."""
        part = c[c["schedule"] == schedule]
        window = part[part["iteration"] > self.last_drops[schedule]] if schedule in self.last_drops \
            else part[part["iteration"] == part["iteration"].max()]
        per_seed = window.groupby("seed")[metric].agg(["mean", "count"])
        kept = per_seed[per_seed["count"] == window["iteration"].nunique()]
        return kept["mean"].rename(metric).reset_index()

    def final_span(self, c: pd.DataFrame, schedule: float) -> str:
        """'iterations 1975-2000 (2 evaluations)': the final window where it holds more than one."""
        if schedule not in self.last_drops:
            return ""
        its = sorted(int(i) for i in c.loc[(c["schedule"] == schedule)
                                           & (c["iteration"] > self.last_drops[schedule]), "iteration"].unique())
        return span(its) if len(its) > 1 else ""


def span(its: Sequence[int]) -> str:
    """'iteration 400', or 'iterations 100-400 (4 evaluations)'."""
    return f"iteration {its[0]}" if len(its) == 1 else f"iterations {its[0]}-{its[-1]} ({len(its)} evaluations)"


def _arm_comparisons(df: pd.DataFrame, c: pd.DataFrame, table: pd.DataFrame, size: str,
                     win: Windows, margin: float, tol: float | None, metric: str,
                     omitted: list[str]) -> list[Claim]:
    """faster_early and catches_up at one size."""
    cols = ["schedule", "iteration", "seed", metric]
    pre, scr = c.loc[c["init"] == "pretrained", cols], c.loc[c["init"] == "scratch", cols]
    common = sorted(set(pre["schedule"]) & set(scr["schedule"]))
    if not common:
        omitted.append(f"faster_early, catches_up on {size} images: the arms share no finished schedule")
        return []
    longest = common[-1]
    pairs = _pairs(pre, scr, metric, ["schedule", "iteration"])
    out = []
    first, last = win.early or (0, 0)
    early = pairs[(pairs["schedule"] == longest) & pairs["iteration"].between(first, last)]
    if win.early is None:
        omitted.append(f"faster_early on {size} images: the run saved no study config, so the early "
                       "window (analysis.early_window, early_iteration) is unknown")
    elif early.empty:
        omitted.append(f"faster_early on {size} images: no evaluation between iterations {first} and {last} "
                       "(analysis.early_window / early_iteration; lower solver.eval_period)")
    else:
        its = sorted(int(i) for i in early["iteration"].unique())
        iv = t_interval(window_means(early).tolist(), win.level)
        points = span(its)
        rule = (f"SUPPORTED if the interval of the gap over {points} of the {longest:g}x curve (each seed's mean "
                f"over the evaluations in the early window [{first}, {last}], fixed before the run) lies above "
                "0; CONTRADICTED if below 0")
        out.append(_claim("faster_early", size, iv, difference_verdict(iv), rule, schedule=longest,
                          iteration=its[-1], detail=_left_out(df, size, [longest], metric),
                          window=points if len(its) > 1 else "", level=win.level))
    finals = {s: _pairs(win.final_seeds(pre, s, metric), win.final_seeds(scr, s, metric), metric, [])
              for s in common}
    pre_ap = table.loc[(table["size"] == size) & (table["init"] == "pretrained")
                       & (table["schedule"] == longest), "mean"].iloc[0]
    cap = round(min(max(MARGIN_CAP_AP, MARGIN_CAP_FRACTION * pre_ap), MARGIN_CAP_RELATIVE * pre_ap), 2)
    m = min(margin, cap, tol if tol is not None else math.inf)
    caught = [s for s in common if _within(t_interval(finals[s]["d"].tolist(), win.level), m)]
    iv = t_interval(finals[longest]["d"].tolist(), win.level)
    final = win.final_span(c, longest)
    how = f"the margin is {m:g} AP" + (f" (analysis.margin {margin:g}, capped at {cap:g})" if margin > cap
                                        else f" (--tol {tol:g})" if tol is not None and tol < min(margin, cap)
                                        else "")
    rule = (f"SUPPORTED if the interval of the final gap at {longest:g}x"
            + (f" (each seed's mean over its final window, {final}, after the last LR drop)" if final else "")
            + f" lies within ±{m:g} AP (or wholly below -{m:g}: scratch ahead); CONTRADICTED if it lies above "
            f"+{m:g}; {how}")
    first = (f"the gap's interval first enters the margin at {caught[0]:g}x" if caught
             else "at no schedule does the gap's interval lie within the margin")
    out.append(_claim("catches_up", size, iv, equivalence_verdict(iv, m), rule,
                      schedule=longest, iteration=int(pre.loc[pre["schedule"] == longest, "iteration"].max()),
                      margin=m, window=final, level=win.level,
                      detail=_join(first, _left_out(df, size, [longest], metric))))
    return out


def _within(iv: Interval, margin: float) -> bool:
    """The interval lies within ±margin, or wholly below -margin (scratch ahead)."""
    return iv.n >= 2 and iv.high <= margin and (iv.low >= -margin or iv.high < -margin)


def _small_data_gap(df: pd.DataFrame, c: pd.DataFrame, table: pd.DataFrame, size: str, metric: str,
                    win: Windows) -> Claim:
    best = {init: table[(table["size"] == size) & (table["init"] == init)].sort_values("mean").iloc[-1]["schedule"]
            for init in ("pretrained", "scratch")}
    pairs = _pairs(win.final_seeds(c[c["init"] == "pretrained"], best["pretrained"], metric),
                   win.final_seeds(c[c["init"] == "scratch"], best["scratch"], metric), metric, [])
    iv = t_interval(pairs["d"].tolist(), win.level)
    rule = ("on the smallest training set, SUPPORTED if the interval of pretrained's final AP at its best "
            "schedule minus scratch's at its own lies above 0; CONTRADICTED if below 0")
    return _claim("small_data_gap", size, iv, difference_verdict(iv), rule, level=win.level,
                  window=win.final_span(c, best["pretrained"]),
                  schedule=best["pretrained"], other_schedule=best["scratch"],
                  detail=_join(f"pretrained at {best['pretrained']:g}x vs scratch at {best['scratch']:g}x "
                               "(each arm's best schedule)",
                               _left_out(df, size, list(best.values()), metric)))


def _overfits(df: pd.DataFrame, c: pd.DataFrame, arm: pd.DataFrame, size: str, init: str, metric: str,
              win: Windows) -> Claim:
    longest = arm["schedule"].max()
    shorter = arm[arm["schedule"] < longest].sort_values("mean").iloc[-1]["schedule"]
    pairs = _pairs(win.final_seeds(c, shorter, metric), win.final_seeds(c, longest, metric), metric, [])
    iv = t_interval(pairs["d"].tolist(), win.level)
    rule = (f"SUPPORTED if the interval of the fall from the arm's best shorter schedule ({shorter:g}x) to "
            f"its longest ({longest:g}x), paired per seed, lies above 0; CONTRADICTED if below 0 (it keeps "
            "improving)")
    return _claim("overfits", size, iv, difference_verdict(iv), rule, level=win.level,
                  window=win.final_span(c, longest), init=init, schedule=longest, other_schedule=shorter,
                  detail=_join(f"the best shorter schedule is the highest of {int((arm['schedule'] < longest).sum())},"
                               " which favours a fall", _left_out(df, size, [shorter, longest], metric)))


# --------------------------------------------------------------------------------------------------
# Text and files
# --------------------------------------------------------------------------------------------------


def interval_text(claim: Claim) -> str:
    """'+0.4 (-3.1 to +3.9)', or '+0.4 (1 seed: no interval)'."""
    if claim.n_seeds == 0:
        return "no pair of finished seeds"
    if claim.n_seeds < 2:
        return f"{claim.gap:+.1f} (1 seed: no interval)"
    return f"{claim.gap:+.1f} ({claim.ci_low:+.1f} to {claim.ci_high:+.1f})"


def level_text(level: float) -> str:
    """'95%', '98.8%': an interval's level as the tables print it."""
    return f"{100 * level:.3g}%"


def where(claim: Claim) -> str:
    """Where the claim is judged, in words: '3x, iteration 15', '2x vs 3x'."""
    if claim.claim == "faster_early":
        return f"{claim.schedule:g}x, " + (claim.window or f"iteration {claim.iteration}")
    final = f", final {claim.window}" if claim.window else ""
    if claim.claim == "small_data_gap":
        return f"pretrained {claim.schedule:g}x vs scratch {claim.other_schedule:g}x{final}"
    if claim.claim == "overfits":
        return f"{claim.other_schedule:g}x vs {claim.schedule:g}x{final}"
    return f"{claim.schedule:g}x{final}"


def sentence(claim: Claim, metric: str = "bbox_AP") -> str:
    """The claim in words: stated only when SUPPORTED or CONTRADICTED; otherwise what would resolve it."""
    on = f"On {claim.size} training images"
    iv = f"({level_text(claim.level)} interval {claim.ci_low:+.1f} to {claim.ci_high:+.1f}, {claim.n_seeds} seeds" \
        + (f", look {claim.look} of {claim.looks})" if claim.looks else ")")
    if claim.verdict == "INCONCLUSIVE":
        who = f"{claim.claim}" + (f" ({claim.init})" if claim.init else "") + f" on {claim.size} images"
        if claim.n_seeds == 0:
            return f"{who}: INCONCLUSIVE: no seed finished in both arms."
        if claim.n_seeds == 1:
            return f"{who}: INCONCLUSIVE: the gap is {claim.gap:+.1f} AP with 1 seed (no interval)."
        # the interval's half-width that would decide it: the margin for an equivalence, else 1 AP
        target = claim.margin if claim.claim == "catches_up" and claim.margin else RESOLVE_AP
        goal = (f"narrow the interval to the ±{target:g} AP margin" if claim.claim == "catches_up"
                else f"resolve a {target:g} AP gap")
        sd = claim.se * math.sqrt(claim.n_seeds)
        need = seeds_to_resolve(sd, target)
        more = (f"with this spread about {max(need, claim.n_seeds + 1)} seeds would {goal}" if need
                else f"with this spread no practical number of seeds would {goal}")
        # a directional claim with a gap wider than 1 AP is decided by excluding 0, which takes fewer
        clear = seeds_to_resolve(sd, abs(claim.gap)) if claim.claim != "catches_up" and abs(claim.gap) > target \
            else None
        if clear:
            more = (f"with this spread about {max(clear, claim.n_seeds + 1)} seeds would put the interval clear of "
                    f"0 if the gap stays near {claim.gap:+.1f} ({more.removeprefix('with this spread ')})")
        return f"{who}: INCONCLUSIVE: the gap is {claim.gap:+.1f} AP {iv}; {more}."
    yes = claim.verdict == "SUPPORTED"
    if claim.claim == "faster_early":
        at = f"over {claim.window}" if claim.window else f"at iteration {claim.iteration}"
        return (f"{on} pretrained is {'ahead' if yes else 'behind'} early: {claim.gap:+.1f} {metric} {at} "
                f"of the {claim.schedule:g}x schedule {iv}.")
    if claim.claim == "catches_up":
        if yes:
            return (f"{on} scratch catches up by {claim.schedule:g}x: the final gap is {claim.gap:+.1f} {metric} "
                    f"{iv}, within ±{claim.margin:g} AP or in scratch's favour; {claim.detail}.")
        return (f"{on} scratch does not catch up by {claim.schedule:g}x: pretrained leads by {claim.gap:.1f} "
                f"{metric} {iv}, beyond the {claim.margin:g} AP margin.")
    if claim.claim == "small_data_gap":
        return (f"{on} (the smallest set) pretrained {'stays ahead' if yes else 'falls behind'}: "
                f"{claim.gap:+.1f} {metric} {iv}, {claim.detail}.")
    if yes:
        return (f"{on} {claim.init} overfits with longer training: its AP falls by {claim.gap:.1f} from "
                f"{claim.other_schedule:g}x to {claim.schedule:g}x {iv}; {claim.detail}.")
    return (f"{on} {claim.init} does not overfit: its AP rises by {-claim.gap:.1f} from {claim.other_schedule:g}x "
            f"to {claim.schedule:g}x {iv}.")


ONE_SEED = ("With 1 seed there is no interval, so a claim judged on one seed is INCONCLUSIVE: list "
            "more grid.seeds to judge it")
MORE_SEEDS = ("More seeds need not mean a new study: run the same study file again under another name "
              "with other grid.seeds, then `study analyze RUN RUN2 --out DIR` judges both runs' seeds together")


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    columns = [f.name for f in dataclasses.fields(Claim)]
    return pd.DataFrame([c.to_json() for c in claims], columns=columns)


def write_claims(claims: Sequence[Claim], out_dir: str | Path) -> Path:
    path = Path(out_dir) / CLAIMS_FILE
    path.write_text(json.dumps([c.to_json() for c in claims], indent=1) + "\n")
    return path


def load_claims(run_dir: str | Path) -> pd.DataFrame:
    """A run's `report/claims.json` (or a report folder's `claims.json`) as a DataFrame."""
    run_dir = Path(run_dir)
    path = run_dir / CLAIMS_FILE if (run_dir / CLAIMS_FILE).is_file() else run_dir / layout.REPORT / CLAIMS_FILE
    return claims_frame([Claim(**c) for c in json.loads(path.read_text())])


def early_point(early_iteration: int | None, unit_iters: int) -> int:
    """Where the early window ends by default: `analysis.early_iteration`, or half of 1x."""
    return early_iteration if early_iteration is not None else round(unit_iters / 2)


def early_window(early_window: Sequence[int] | None, early_iteration: int | None,
                 unit_iters: int) -> tuple[int, int]:
    """The iterations whose evaluations `faster_early` averages: `analysis.early_window`, else
    from the first evaluation to `early_point`."""
    if early_window is not None:
        return int(early_window[0]), int(early_window[1])
    return 0, early_point(early_iteration, unit_iters)
