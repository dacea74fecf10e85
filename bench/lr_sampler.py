"""Which Optuna sampler finds a good LR in few trials? A synthetic objective with a known optimum.

The objective stands in for "final bbox AP of a cell as a function of its LR": a bump in log10(LR),
AP = top - curvature * (log10(lr) - log10(lr*))^2, plus Gaussian noise for the seed-to-seed
spread, with lr* drawn log-uniformly from the middle of the range for every repetition. Each
sampler proposes `n` LRs for one cell, `parallel` at a time (asked before any of them is told,
as concurrent trials are); the LR it would report is the one with the best *observed* AP. The
score is the regret: the true AP at lr* minus the true AP at that LR (0 is perfect), averaged
over repetitions, with the fraction of repetitions within 1 AP of the optimum.

    python bench/lr_sampler.py --reps 200 --out docs/results/lr_sampler.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from study.tune.searcher import SAMPLERS, make_sampler

LOW, HIGH = 0.005, 0.16  # 1.5 decades, as a search around the paper's 0.02 would span
TOP, CURVATURE, NOISE = 40.0, 20.0, 1.0  # -5 AP half a decade off the optimum; 1 AP seed noise


def true_ap(lr: float, best: float) -> float:
    return TOP - CURVATURE * (math.log10(lr) - math.log10(best)) ** 2


def run_one(sampler: optuna.samplers.BaseSampler, n: int, parallel: int, best: float,
            noise: random.Random) -> float:
    """The regret of one search of `n` trials, `parallel` asked at a time."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = {"lr": optuna.distributions.FloatDistribution(LOW, HIGH, log=True)}
    seen: list[tuple[float, float]] = []
    while len(seen) < n:
        batch = [study.ask(dist) for _ in range(min(parallel, n - len(seen)))]
        for trial in batch:
            lr = trial.params["lr"]
            observed = true_ap(lr, best) + noise.gauss(0.0, NOISE)
            study.tell(trial, observed)
            seen.append((lr, observed))
    chosen = max(seen, key=lambda p: p[1])[0]
    return TOP - true_ap(chosen, best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--samples", default="4,8,12")
    parser.add_argument("--parallel", default="1,4")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.samples.split(",")):
        for parallel in (int(p) for p in args.parallel.split(",")):
            if parallel > n:
                continue
            for name in SAMPLERS:
                tick = time.perf_counter()
                regrets = []
                for rep in range(args.reps):
                    rng = random.Random(rep)
                    best = 10 ** rng.uniform(math.log10(LOW) + 0.25, math.log10(HIGH) - 0.25)
                    sampler = make_sampler(name, samples=n, seed=1000 + rep)
                    regrets.append(run_one(sampler, n, parallel, best, random.Random(10_000 + rep)))
                row = {"sampler": name, "samples": n, "parallel": parallel, "reps": args.reps,
                       "mean_regret": statistics.fmean(regrets),
                       "median_regret": statistics.median(regrets),
                       "within_1ap": sum(r <= 1.0 for r in regrets) / len(regrets),
                       "seconds": time.perf_counter() - tick}
                rows.append(row)
                print(f"n={n:2d} parallel={parallel} {name:10s} regret mean {row['mean_regret']:.2f} "
                      f"median {row['median_regret']:.2f} AP, within 1 AP {row['within_1ap']:.0%} "
                      f"({row['seconds']:.0f} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"objective": {"low": LOW, "high": HIGH, "top": TOP,
                                                      "curvature": CURVATURE, "noise": NOISE},
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
