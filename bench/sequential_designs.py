"""How the catch-up study's design was chosen: simulated error rates, power and seeds used of fixed
and sequential designs, judged with the analysis's own functions (`study.analysis.claims`,
`study.analysis.sequential`). Prints the Markdown table of docs/verdicts.md.

Per-seed final gaps are normal with sd `--sd` (the six-seed catch-up runs at 3x had 0.6 and 0.9
AP); "null" is a difference claim with no true gap (sd 1), "at margin" an equivalence claim whose
true gap equals `--margin`; both should read 2.5%. Each study stops at its first verdict, as the
searcher stops adding seeds.

    python bench/sequential_designs.py                 # 2,000 studies per cell, about a minute
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from study.analysis.claims import Interval, Verdict, difference_verdict, equivalence_verdict
from study.analysis.sequential import first_verdict
from study.plan.looks import Look, plan_looks

DESIGNS: list[tuple[tuple[int, ...], str]] = [
    ((6,), "fixed"), ((4,), "fixed"), ((5,), "fixed"), ((4, 5), "obrien_fleming"), ((4, 5), "pocock"),
    ((4, 5, 6), "obrien_fleming"), ((3, 4, 5), "obrien_fleming"), ((3, 5, 7), "pocock"),
    ((4, 6), "obrien_fleming"), ((4, 5, 6, 7), "obrien_fleming"), ((4, 5, 6), "pocock")]


def simulate(looks: tuple[Look, ...], gap: float, sd: float, decide: Callable[[Interval], Verdict], *,
             studies: int, seed: int = 0) -> tuple[float, float]:
    """(how often SUPPORTED, the mean seeds used)."""
    rng = np.random.default_rng(seed)
    judged = [first_verdict(row, looks, decide) for row in gap + rng.normal(0.0, sd, (studies, looks[-1].seeds))]
    return (sum(verdict == "SUPPORTED" for verdict, _ in judged) / studies,
            sum(look.seeds for _, look in judged) / studies)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--sd", type=float, default=0.8, help="per-seed sd of the final gap (AP)")
    parser.add_argument("--margin", type=float, default=3.5)
    parser.add_argument("--gaps", type=float, nargs=2, default=(1.5, 2.5), help="two true final gaps (AP)")
    args = parser.parse_args(argv)
    n = args.studies

    def equivalent(iv: Interval) -> Verdict:
        return equivalence_verdict(iv, args.margin)

    low, high = args.gaps
    print(f"| design | null: SUPPORTED | at margin: SUPPORTED | catches_up SUPPORTED at a true gap of {low:g} / "
          f"{high:g} AP | mean seeds at {low:g} |")
    print("| --- | --- | --- | --- | --- |")
    for seeds_at, spending in DESIGNS:
        looks = plan_looks(seeds_at, "obrien_fleming" if spending == "fixed" else spending)  # type: ignore[arg-type]
        null, _ = simulate(looks, 0.0, 1.0, difference_verdict, studies=n)
        at_margin, _ = simulate(looks, args.margin, args.sd, equivalent, studies=n)
        power_low, used = simulate(looks, low, args.sd, equivalent, studies=n)
        power_high, _ = simulate(looks, high, args.sd, equivalent, studies=n)
        name = ", then ".join(map(str, seeds_at)) + f" seeds, {spending.replace('_', '-')}"
        print(f"| {name} | {100 * null:.1f}% | {100 * at_margin:.1f}% | {100 * power_low:.0f}% / "
              f"{100 * power_high:.0f}% | {used:.2f} |")


if __name__ == "__main__":
    main()
