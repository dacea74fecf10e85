"""Where one trial's time goes, by source: py-spy samples the tiny-profile trial loop (the default
study's settings, one thread) and attributes each sample to the innermost Python frame, then sums
by owner: this project (study/, models/), torchvision, torch, pycocotools and the rest.

    .venv/bin/python bench/profile_step.py                 # ~1 minute; prints the split and the top lines
    .venv/bin/python bench/profile_step.py --iters 200 --rate 200
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def loop(iters: int) -> None:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from suite import TINY  # the same tiny-profile trial as the overhead benchmark

    from study.config import study_from_dict
    from study.plan.trials import Size, Trial
    from study.train.build import split_paths
    from study.train.loop import train_trial

    torch.set_num_threads(1)
    cfg = study_from_dict({**TINY, "solver": {**TINY["solver"], "unit_iters": iters, "eval_period": iters // 2}})
    with tempfile.TemporaryDirectory() as tmp:
        split_paths(cfg, Path(tmp) / "data")
        train_trial(cfg, Trial(init="scratch", schedule=1, base_lr=0.02, seed=0, size=Size(200)),
                    out_dir=Path(tmp) / "t", data_root=Path(tmp) / "data")


def owner(frame: str) -> str:
    """'function (path:line)' -> who owns that code."""
    path = frame.rsplit("(", 1)[-1]
    for key, name in (("torchvision/", "torchvision"), ("pycocotools/", "pycocotools"),
                      ("faster_coco_eval/", "faster-coco-eval"), ("torch/", "torch"), ("numpy/", "numpy"),
                      ("PIL/", "PIL")):
        if key in path:
            return name
    if path.startswith(("study/", "models/")) or f"{REPO}/" in path:
        return "this project"
    return "other"


# Our functions that mark what a sample of the trial loop is doing, outermost first.
PHASES = (("DataLoader", "data loading"), ("_MultiProcessingDataLoaderIter", "data loading"),
          ("_SingleProcessDataLoaderIter", "data loading"), ("train_step", "training step"),
          ("predict", "evaluation: inference"), ("coco_metrics", "evaluation: COCOeval"),
          ("save (", "checkpoint"), ("_log (", "metric log"))


def phase(frames: list[str]) -> str:
    for frame in frames:
        for marker, name in PHASES:
            if frame.startswith(marker) or f" {marker}" in frame or frame.startswith(marker.split(" (")[0] + " ("):
                return name
    return "loop: the rest"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=120, help="training iterations (2 evaluations)")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)  # the profiled child
    args = p.parse_args()
    if args.loop:
        loop(args.iters)
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        py_spy = Path(sys.executable).with_name("py-spy")
        subprocess.run([str(py_spy), "record", "--format", "raw", "--rate", str(args.rate), "-o", str(raw),
                        "--", sys.executable, __file__, "--loop", "--iters", str(args.iters)],
                       check=True, capture_output=True)
        stacks = [line.rsplit(" ", 1) for line in raw.read_text().splitlines() if line.strip()]
    phases: collections.Counter[str] = collections.Counter()
    step_owner: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = in_loop = 0
    for stack, count in stacks:
        frames, n = stack.split(";"), int(count)
        total += n
        at = next((i for i, f in enumerate(frames) if f.startswith("train_trial (")), None)
        if at is None:
            continue  # start-up: imports, data generation, model building
        in_loop += n
        inner = frames[at + 1:]
        what = phase(inner)
        phases[what] += n
        if what == "training step":
            step_owner[owner(frames[-1])] += n
        for frame in reversed(inner):  # the innermost frame of this project's code on the stack
            if owner(frame) == "this project":
                ours[frame] += n
                break
    print(f"{total} samples, {in_loop} inside train_trial ({100 * in_loop / total:.0f}%; the rest is start-up)")
    print("inside the trial loop:")
    for name, n in phases.most_common():
        print(f"  {100 * n / in_loop:5.1f}%  {name}")
    step = phases["training step"] or 1
    print("inside the training step, by the owner of the innermost frame:")
    for name, n in step_owner.most_common():
        print(f"  {100 * n / step:5.1f}%  {name}")
    print("this project's innermost frames on the stack (inclusive of what they call):")
    for frame, n in ours.most_common(10):
        print(f"  {100 * n / in_loop:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
