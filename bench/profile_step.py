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
    from study.trial import Trial, split_paths, train_trial

    torch.set_num_threads(1)
    cfg = study_from_dict({**TINY, "solver": {**TINY["solver"], "unit_iters": iters, "eval_period": iters // 2}})
    with tempfile.TemporaryDirectory() as tmp:
        split_paths(cfg, Path(tmp) / "data")
        train_trial(cfg, Trial(init="scratch", schedule=1, base_lr=0.02, seed=0, train_images=200),
                    out_dir=Path(tmp) / "t", data_root=Path(tmp) / "data")


def owner(frame: str) -> str:
    """'function (path:line)' -> who owns that code."""
    path = frame.rsplit("(", 1)[-1]
    for key, name in (("/study/", "study (ours)"), ("/models/", "models (ours)"), ("torchvision/", "torchvision"),
                      ("pycocotools/", "pycocotools"), ("torch/", "torch"), ("numpy/", "numpy"), ("PIL/", "PIL")):
        if key in path:
            return name
    return "other"


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
    by_owner: collections.Counter[str] = collections.Counter()
    by_frame: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in stacks:
        frames = stack.split(";")
        n = int(count)
        total += n
        by_owner[owner(frames[-1])] += n
        by_frame[frames[-1]] += n
        for frame in reversed(frames):  # the innermost frame of our own code on the stack
            if owner(frame).endswith("(ours)"):
                ours[frame] += n
                break
    print(f"{total} samples; innermost frame's owner:")
    for name, n in by_owner.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("top innermost frames:")
    for frame, n in by_frame.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("our frames nearest to where the time is spent (inclusive of what they call):")
    for frame, n in ours.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
