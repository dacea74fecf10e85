"""One real trial of the smoke study on this machine's GPU, stopped halfway and resumed.

What `bench/gpu_check.py` does not touch: `study.train.loop.train_trial` itself on CUDA, i.e. the
synthetic COCO set through the pinned-memory DataLoader, bf16 autocast, evaluation (COCO bbox and
mask AP) on the GPU, and a checkpoint that carries the CUDA RNG state. The same trial runs twice:
straight through, and stopped at the middle evaluation then resumed from its checkpoint; both
histories are printed with their largest differences. On the CPU the two agree exactly (the
tests hold that). On CUDA they do not even agree before the stop, where both runs execute the
same code from the same seed: nondeterministic CUDA kernels (atomic adds in torchvision's
RoIAlign backward, some cuDNN backward convolutions) make every run differ a little, so the
script prints the difference up to the stop (the device's own run-to-run spread) next to the
difference over the whole history instead of asserting equality.

    python bench/gpu_trial.py                  # on a GPU (falls back to the CPU without one)
    python bench/gpu_trial.py --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from study.config import load_study
from study.layout import read_metrics
from study.plan.trials import Size, Trial
from study.train.build import trial_device
from study.train.loop import train_trial

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("loss", "loss_classifier", "loss_mask", "bbox_AP", "segm_AP")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / "smoke.yaml")
    p.add_argument("--json", metavar="FILE", help="append both histories to FILE as one JSON line")
    args = p.parse_args()

    cfg = load_study(args.space)
    gpus = 1.0 if args.device == "cuda" else 0.0
    cfg = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, gpus_per_worker=gpus))
    device = trial_device(cfg)
    trial = Trial(init="scratch", schedule=max(cfg.grid.schedule), base_lr=cfg.solver.base_lr,
                  seed=0, size=Size(cfg.grid.train_images[0] if cfg.grid.train_images else "full"))
    histories: dict[str, list[dict]] = {}
    stop = 0
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for name in ("straight", "resumed"):
            out = Path(tmp) / name
            start = time.perf_counter()
            if name == "resumed":  # stop at the middle evaluation, then a fresh call resumes
                evals = [r["iteration"] for r in histories["straight"]]
                stop = evals[len(evals) // 2 - 1]
                train_trial(cfg, trial, out_dir=out, data_root=data, device=device, stop_at=stop)
            train_trial(cfg, trial, out_dir=out, data_root=data, device=device)
            rows = histories[name] = read_metrics(out)  # the evaluations, each once
            print(f"{name} on {device}: {len(rows)} evaluations in {time.perf_counter() - start:.1f} s")
            for r in rows:
                print(f"  it {r['iteration']:4d}  {r['status']:8s}  "
                      + "  ".join(f"{k} {r[k]:.4f}" for k in COLUMNS) + f"  {r['images_per_s']:.1f} images/s")
    straight, resumed = histories["straight"], histories["resumed"]
    assert [r["iteration"] for r in straight] == [r["iteration"] for r in resumed], "histories differ in length"
    pairs = list(zip(straight, resumed))
    diffs = {k: max(abs(a[k] - b[k]) for a, b in pairs) for k in COLUMNS}
    # Up to the stop both runs executed the same code from the same seed: any difference there is
    # the device's own run-to-run nondeterminism, the yardstick for the difference after it.
    before = {k: max(abs(a[k] - b[k]) for a, b in pairs if a["iteration"] <= stop) for k in COLUMNS}
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"up to the stop at iteration {stop} (no resume yet): largest difference "
          + ", ".join(f"{k} {v:.2g}" for k, v in before.items()))
    print(f"trial {trial.name()} on {name}: largest |straight - resumed| "
          + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"device": name, "torch": torch.__version__, "trial": trial.name(),
                                "stop_at": stop, "straight": straight, "resumed": resumed,
                                "max_diff": diffs, "max_diff_before_stop": before}) + "\n")


if __name__ == "__main__":
    main()
