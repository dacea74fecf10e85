"""The multi-GPU path of a trial, checked on one GPU in a few minutes; one table at the end.

A one-GPU machine cannot run two NCCL ranks (NCCL refuses two ranks on one device), but Ray Train
makes a process group for one worker too, and the trial code takes the same path at world size 1
as at 8: its collectives (`study.train.collectives`: CPU values over a gloo group beside NCCL),
DDP, the divergence agreed before `backward`, SyncBatchNorm, checkpoints with every rank's RNG.
Each check below runs through that path, with Ray Train's real NCCL process group:

  collectives   sums, gathers and the divergence vote of CPU values through NCCL's process group,
                and one bf16 step of the SyncBN detector under DDP (SyncBatchNorm layers counted)
  trial         a tiny trial (ResNet-18, 64 px) with gpus_per_worker: 1: rows, AP, checkpoints,
                progress rows between evaluations
  nan drill     a NaN planted at a chosen iteration: the trial ends 'diverged' there, no hang
  kill/resume   the worker SIGKILLed after a checkpoint between two evaluations: Ray Train restarts
                it, it resumes from that checkpoint, and its rows are compared with the
                uninterrupted run's (beside the device's own run-to-run spread: CUDA kernels such
                as RoIAlign's backward add in no fixed order)
  syncbn bf16   the same trial with norm syncbn in bf16 autocast
  pretrain      `study pretrain` on the GPU: a Ray Train job that asks Ray for one

Without a GPU (or with --dry) it checks that every configuration it would run is valid, prints
the plan and says why it skips; that is how CI runs it. --cpu rehearses the checks on the CPU
(gloo instead of NCCL; SyncBN and the GPU's pre-training left out), so that the script itself is
known to work before a GPU is at hand.

    python bench/gpu_distributed.py                 # on a machine with a CUDA GPU
    python bench/gpu_distributed.py --json out.json # and keep the table
    python bench/gpu_distributed.py --dry           # the plan only
    python bench/gpu_distributed.py --cpu           # a rehearsal on the CPU (gloo)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from study import layout
from study.config import PretrainConfig, StudyConfig, study_from_dict
from study.plan.trials import Size, Trial

CURVE = ("loss", "loss_classifier", "loss_mask", "bbox_AP", "segm_AP")
NAN_AT = 7
TRIAL = Trial(init="scratch", schedule=1, base_lr=0.01, seed=0, size=Size(16))


GPUS = 1.0  # per worker; 0 in a --cpu rehearsal


def study(*, norm: str = "gn", precision: str = "auto", max_failures: int = 0) -> StudyConfig:
    """A tiny study on one worker with `GPUS` GPUs: 24 iterations of 4 images at 64 px,
    evaluations every 12, checkpoints every 4, progress rows every 3."""
    return study_from_dict({
        "name": "gpu_distributed",
        "data": {"synthetic": {"train_images": 24, "val_images": 8, "image_size": 64}},
        "model": {"backbone": "resnet18", "norm": norm, "profile": "tiny", "min_size": 64, "max_size": 64},
        "solver": {"base_lr": 0.01, "ims_per_batch": 4, "unit_iters": 24, "drops_before_end": [8, 4],
                   "warmup_iters": 2, "eval_period": 12, "checkpoint_period": 4, "log_period": 3,
                   "precision": precision},
        "grid": {"schedule": [1]},
        "resources": {"workers": 1, "gpus_per_worker": GPUS if norm != "syncbn" else 1, "cpus_per_worker": 2,
                      "max_failures": max_failures},
    })


def pretrain_config() -> PretrainConfig:
    return PretrainConfig(image_size=32, epochs=2, batch_size=16, train_images=128, val_images=32,
                          warmup_iters=2, gpus_per_worker=GPUS)


@dataclass
class Row:
    check: str
    ok: bool
    seconds: float
    detail: str


# --------------------------------------------------------------------------------------------------
# The checks (each returns its row; `tmp` is a fresh folder)
# --------------------------------------------------------------------------------------------------


def collectives_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: the collectives with CPU values, then one bf16 step of the SyncBN detector
    (GN on a CPU) under DDP; what it saw goes to `config['out']`."""
    import ray.train.torch
    from torch import nn

    from models.norms import convert_sync_batchnorm
    from study.train import collectives
    from study.train.build import build_detector, build_sgd
    from study.train.steps import train_step

    device = ray.train.torch.get_device()
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.set_device(device)
    out: dict[str, Any] = {"group": collectives.describe(), "device": str(device),
                           "sums": collectives.sum_over_ranks({"a": 1.5, "b": 2.0}),
                           "gathered": collectives.gather_over_ranks(["x", {"y": 1}]),
                           "all_finite_1": collectives.all_finite(1.0), "all_finite_nan": collectives.all_finite(math.nan)}
    norm = "syncbn" if gpu else "gn"
    cfg = study_from_dict({**config["study"], "model": {**config["study"]["model"], "norm": norm}})
    torch.manual_seed(0)
    model = build_detector(cfg, 3).to(device)
    model = convert_sync_batchnorm(model, norm, device)
    out["syncbn_layers"] = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    net = collectives.data_parallel(model, device)
    out["wrapped"] = type(net).__name__
    optimizer = build_sgd(model, lr=0.01, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    images = [torch.rand(3, 64, 64, device=device) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]], device=device),
                "labels": torch.tensor([1], device=device),
                "masks": torch.zeros(1, 64, 64, dtype=torch.uint8, device=device)} for _ in range(2)]
    for t in targets:
        t["masks"][0, 8:40, 8:40] = 1
    out["step_loss"] = train_step(net, images, targets, optimizer, bf16=True)["loss"]
    with open(Path(config["out"]) / "collectives.json", "w") as f:
        json.dump(out, f)


def check_collectives(tmp: Path) -> Row:
    from study.tune.launch import fit_torch

    from study.config import to_dict

    start = time.perf_counter()
    fit_torch(collectives_worker, {"out": str(tmp), "study": to_dict(study())}, name="collectives",
              storage_path=str(tmp / "ray"), workers=1, use_gpu=GPUS > 0,
              resources_per_worker={"CPU": 1, **({"GPU": GPUS} if GPUS else {})})
    got = json.loads((tmp / "collectives.json").read_text())
    ok = (got["group"].startswith("nccl" if GPUS else "gloo") and got["sums"] == {"a": 1.5, "b": 2.0}
          and got["gathered"] == ["x", {"y": 1}] and got["all_finite_1"] and not got["all_finite_nan"]
          and (got["syncbn_layers"] > 0) == (GPUS > 0) and got["wrapped"] == "DistributedDataParallel"
          and math.isfinite(got["step_loss"]))
    return Row("collectives", ok, time.perf_counter() - start,
               f"{got['group']}; sums, gather, NaN vote right; {got['syncbn_layers']} SyncBatchNorm layers "
               f"in DDP, bf16 step loss {got['step_loss']:.3f}")


def run_trial(cfg: StudyConfig, out: Path, **kwargs: Any) -> tuple[list[dict], float]:
    from study.tune.jobs import run_trial_on_ray

    start = time.perf_counter()
    run_trial_on_ray(cfg, TRIAL, out_dir=out, data_root=out.parent / "data", storage=out.parent / f"ray_{out.name}",
                     **kwargs)
    return layout.read_metrics(out), time.perf_counter() - start


def check_trial(tmp: Path) -> tuple[Row, list[dict]]:
    rows, seconds = run_trial(study(), tmp / "straight")
    last = rows[-1] if rows else {}
    ok = [r["iteration"] for r in rows] == [12, 24] and last.get("status") == "finished" and all(
        math.isfinite(last[k]) for k in CURVE)
    return Row("trial", ok, seconds, f"rows at {[r['iteration'] for r in rows]}, final bbox AP "
                                     f"{last.get('bbox_AP', float('nan')):.2f}, {last.get('images_per_s', 0):.0f} "
                                     "images/s"), rows


def check_nan_drill(tmp: Path) -> Row:
    from study.train.loop import NanDrill

    rows, seconds = run_trial(study(), tmp / "drill", drill=NanDrill(iteration=NAN_AT, rank=0))
    ok = bool(rows) and (rows[-1]["iteration"], rows[-1]["status"]) == (NAN_AT, "diverged") and seconds < 120
    return Row("nan drill", ok, seconds, f"NaN planted at {NAN_AT}: last row {rows[-1]['status'] if rows else None} "
                                         f"at {rows[-1]['iteration'] if rows else None}")


def _kill_after_a_checkpoint(out: Path, killed: list[int]) -> None:
    """SIGKILL the trial's Ray Train worker once its folder holds a checkpoint."""
    import ray
    from ray.util.state import list_actors

    deadline = time.time() + 300
    while time.time() < deadline:
        record = layout.read_checksums(out).get(layout.CHECKPOINT)
        if record is not None:
            address = ray.get_runtime_context().gcs_address
            workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                            ("state", "=", "ALIVE")])
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(record["iteration"])
                return
        time.sleep(0.02)


def _largest_difference(a: list[dict], b: list[dict]) -> float:
    return max((abs(x[k] - y[k]) for x, y in zip(a, b) for k in CURVE), default=float("nan"))


def check_kill_resume(tmp: Path, straight: list[dict]) -> Row:
    again, _ = run_trial(study(), tmp / "again")
    spread = _largest_difference(straight, again)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_after_a_checkpoint, args=(tmp / "killed", killed), daemon=True)
    killer.start()
    rows, seconds = run_trial(study(max_failures=1), tmp / "killed")
    killer.join(timeout=10)
    same = [(r["iteration"], r["status"]) for r in rows] == [(r["iteration"], r["status"]) for r in straight]
    diff = _largest_difference(rows, straight)
    ok = bool(killed) and same
    where = f"killed after the checkpoint of iteration {killed[0]}" if killed else "the kill did not land"
    return Row("kill/resume", ok, seconds, f"{where}; same rows; largest |resumed - straight| {diff:.2g} "
                                           f"(two straight runs: {spread:.2g})")


def check_syncbn(tmp: Path) -> Row:
    rows, seconds = run_trial(study(norm="syncbn", precision="bf16"), tmp / "syncbn")
    last = rows[-1] if rows else {}
    ok = last.get("status") == "finished" and all(math.isfinite(last[k]) for k in CURVE)
    return Row("syncbn bf16", ok, seconds, f"norm syncbn, bf16 autocast: {last.get('status')} at "
                                           f"{last.get('iteration')}, loss {last.get('loss', float('nan')):.3f}")


def check_pretrain(tmp: Path) -> Row:
    from study.tune.weights import run_pretrain

    start = time.perf_counter()
    record = run_pretrain(pretrain_config(), backbone="resnet18", out=tmp / "pretrain.pt", data_dir=tmp / "pdata",
                          progress=lambda _s: None)
    ok = (record.device != "cpu") == (GPUS > 0) and record.workers == 1 and (tmp / "pretrain.pt").is_file()
    return Row("pretrain", ok, time.perf_counter() - start,
               f"on {record.device} ({record.precision}), val accuracy {100 * record.val_accuracy:.0f}%")


# --------------------------------------------------------------------------------------------------


def plan() -> list[tuple[str, Callable[[], Any]]]:
    """Every check's configuration, built and validated (what --dry checks)."""
    return [("collectives", lambda: study(norm="syncbn", precision="bf16")),
            ("trial", study), ("nan drill", study), ("kill/resume", lambda: study(max_failures=1)),
            ("syncbn bf16", lambda: study(norm="syncbn", precision="bf16")),
            ("pretrain", pretrain_config)]


def table(rows: list[Row], device: str) -> str:
    import ray

    lines = [f"multi-GPU path at world size 1 on {device} (torch {torch.__version__}, Ray {ray.__version__})",
             "| check | result | seconds | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.check} | {'PASS' if r.ok else 'FAIL'} | {r.seconds:.1f} | {r.detail} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="check the configurations and print the plan only")
    p.add_argument("--cpu", action="store_true", help="rehearse on the CPU (gloo; no SyncBN, no GPU pre-training)")
    p.add_argument("--json", metavar="FILE", help="write the rows to FILE")
    args = p.parse_args()
    global GPUS
    GPUS = 0.0 if args.cpu else 1.0
    for name, build in plan():
        build()
        print(f"  {name}: configuration valid")
    if args.dry or not (args.cpu or torch.cuda.is_available()):
        why = "--dry" if args.dry else "no CUDA device here (torch.cuda.is_available() is False)"
        print(f"SKIPPED: {why}; the checks above need one GPU and take a few minutes")
        return 0
    from study.train.precision import cpu_model
    from study.tune.launch import start_ray

    device = f"the CPU ({cpu_model()}), a rehearsal" if args.cpu else torch.cuda.get_device_name(0)
    start_ray(cpus=os.cpu_count() or 1)
    rows: list[Row] = []
    straight: list[dict] = []  # the trial check's rows, which kill/resume compares with

    def trial(folder: Path) -> Row:
        nonlocal straight
        row, straight = check_trial(folder)
        return row

    checks: list[tuple[str, Callable[[Path], Row]]] = [
        ("collectives", check_collectives), ("trial", trial), ("nan drill", check_nan_drill),
        ("kill/resume", lambda folder: check_kill_resume(folder, straight)),
        *([("syncbn bf16", check_syncbn)] if GPUS else []), ("pretrain", check_pretrain)]
    with tempfile.TemporaryDirectory(prefix="gpu_distributed_") as d:
        for number, (name, run) in enumerate(checks):
            folder = Path(d) / f"check{number}"
            folder.mkdir()
            start = time.perf_counter()
            try:
                row = run(folder)
            except Exception as e:  # one failing check must not hide the others
                row = Row(name, False, time.perf_counter() - start, f"raised {type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(f"== {row.check}: {'PASS' if row.ok else 'FAIL'} in {row.seconds:.1f} s: {row.detail}", flush=True)
    text = table(rows, device)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
