"""What a progress row costs a trial: the same loop of simulated steps with and without a report
every `--every` steps, on both paths a trial reports through.

- `tune`: a one-worker CPU trial reports from its Tune trial's own process (`ray.tune.report`).
- `train`: a multi-worker (or GPU) trial reports from every Ray Train worker (`ray.train.report`,
  a barrier across the workers), forwarded to Tune by `TuneReportCallback`, as `study.tune.jobs`
  does.

A step is `time.sleep(--step-s)`, so the difference between the two runs is the reports' own
cost, not the model's. Prints the seconds of each worker loop (steps and reports) and the cost
per report.

    python bench/report_cost.py                        # 60 steps of 0.1 s, a report every 20 / every 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _steps(config: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """`config['steps']` sleeps of `config['step_s']`, a progress row to `report` every
    `config['every']` (0: none), then a last row with the loop's own seconds."""
    start = time.perf_counter()
    for it in range(1, config["steps"] + 1):
        time.sleep(config["step_s"])
        if config["every"] and it % config["every"] == 0:
            report({"iteration": it, "bbox_AP": float("nan"), "timesteps_total": it})
    report({"iteration": config["steps"], "bbox_AP": 1.0, "timesteps_total": config["steps"],
            "loop_s": time.perf_counter() - start})


def tune_trainable(config: dict[str, Any]) -> None:
    import ray.tune

    from study.tune.launch import ray_env_defaults

    ray_env_defaults()
    _steps(config, ray.tune.report)


def train_worker(config: dict[str, Any]) -> None:
    import ray.train

    _steps(config, lambda row: ray.train.report(row))


def train_trainable(config: dict[str, Any]) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from study.tune.launch import fit_torch

    with tempfile.TemporaryDirectory() as d:
        fit_torch(train_worker, config, name="report_cost", storage_path=d, workers=config["workers"],
                  callbacks=[TuneReportCallback()])


def run(path: str, config: dict[str, Any], storage: str) -> float:
    """Seconds of the worker's loop of steps and reports, its last report included (what Tune got
    from it: the start-up of a Ray Train job varies by seconds and is left out)."""
    from ray import tune

    trainable = tune_trainable if path == "tune" else train_trainable
    resources = {"CPU": 1} if path == "tune" else {"CPU": 0.1}
    grid = tune.Tuner(tune.with_resources(trainable, resources), param_space=config,
                      tune_config=tune.TuneConfig(num_samples=1, metric="bbox_AP", mode="max"),
                      run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    return float(grid[0].metrics["loop_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--step-s", type=float, default=0.1)
    p.add_argument("--every", type=int, nargs="+", default=[20, 1], help="report every N steps (default 20 1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers on the train path (default 2)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()

    import ray

    from study.train.precision import cpu_model
    from study.tune.launch import start_ray

    start_ray(cpus=args.workers + 1, dashboard=False)
    results = []
    with tempfile.TemporaryDirectory() as storage:
        for round_ in range(args.rounds):
            for path in ("tune", "train"):
                for every in [0, *args.every]:  # 0: no progress reports, the baseline
                    config = {"steps": args.steps, "step_s": args.step_s, "every": every, "workers": args.workers}
                    seconds = run(path, config, storage)
                    reports = args.steps // every if every else 0
                    results.append({"round": round_, "path": path, "every": every, "reports": reports,
                                    "seconds": seconds})
                    print(f"round {round_} {path:5s} report every {every or '-':>2}: {reports:3d} reports, "
                          f"{seconds:.2f} s", flush=True)
    ray.shutdown()
    print(f"\n{cpu_model()}, {args.steps} steps of {args.step_s} s ({args.steps * args.step_s:.1f} s of steps):")
    for path in ("tune", "train"):
        base = [r["seconds"] for r in results if r["path"] == path and r["every"] == 0]
        for every in args.every:
            runs = [r for r in results if r["path"] == path and r["every"] == every]
            extra = [(r["seconds"] - b) / r["reports"] * 1000 for r, b in zip(runs, base)]
            with_reports = " / ".join(f"{r['seconds']:.2f}" for r in runs)
            without = " / ".join(f"{b:.2f}" for b in base)
            per_report = " / ".join(f"{e:.1f}" for e in extra)
            print(f"  {path:5s} a report every {every:>2} steps: {with_reports} s vs {without} s without; "
                  f"{per_report} ms per report")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "steps": args.steps, "step_s": args.step_s, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
