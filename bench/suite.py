"""The benchmark suite: one command, a table, a JSON file. Each part compares its variants in this
process, one after another, on this machine, so the ratios hold on a noisy machine.

    .venv/bin/python bench/suite.py                        # every part; a few minutes on 2 cores
    .venv/bin/python bench/suite.py --only overhead,eval   # some parts
    .venv/bin/python bench/suite.py --study runs/default   # also: where a finished study's time went

Parts:
  overhead  iterations/s of one trial's training loop (tiny profile, batch 4, one thread per
            process, after warm-up): a plain PyTorch loop written here in the shape of
            torchvision's reference `train_one_epoch`, `study.train.loop.train_trial` without Ray, and
            the same under Ray Train with 1 and 2 workers; each in a fresh process, 2 rounds
  loader    the COCO data layer (decode, resize, flip, masks) per batch, in the loop's process and
            with 2 loader processes, against the training step alone
  forking   a 3-schedule grid with forking on and off: iterations trained, wall time, and whether
            every schedule's metrics agree
  eval      COCOeval of a few hundred images, bbox and segm: pycocotools against faster-coco-eval
  roofline  GFLOP per image (counted by FlopCounterMode), achieved GFLOP/s and its fraction of this
            machine's matmul peak (measured here, fp32 and, where the CPU has it natively, bf16) for
            one trial-loop step (1 thread, as a trial runs) and one pre-training step (every core)
  levers    the default study's pretrained trial trained for the same wall time (60 s, one thread,
            two runs at a time, 2 seeds) with one change each: bf16 autocast, torch.compile, 2 or 8
            images per batch, wider heads, more RoIs, more detections kept for evaluation; bbox AP
            at that budget, per CPU-minute, and the evaluation's seconds per point
  step      one trial step and one evaluation with the trial loop's CPU levers added one at a time:
            torch's default SGD -> fused SGD -> tiny maps as unfold + matmul (models.small_convs)
            -> RoIAlign's backward as matrix products (models.roi_align); evaluation in fp32 and
            in bf16. The default study's detector and data, one thread, each variant in a fresh
            process, interleaved rounds
  roi_pair  the last step lever paired in one process: blocks of steps of the same model,
            alternating torchvision's RoIAlign and models.roi_align's; the median per-pair ratio
  ray       Ray's fixed cost: per Tune trial (actors reused or not) and per Ray Train run with a
            trivial loop (median of 3; its health-check interval at our 0.25 s and at Ray's 2 s)
  study     (with --study RUN_DIR) a finished `study run`'s phases and its trials' train / eval /
            overhead split, from its run.json and metric logs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BATCH, WINDOW, WINDOWS = 4, 20, 4  # a window of iterations is timed as one; the first is warm-up
TINY = {
    "name": "bench",
    "data": {"synthetic": {"train_images": 200, "val_images": 8, "image_size": 64}},
    "model": {"backbone": "resnet18", "norm": "gn", "profile": "tiny", "min_size": 64, "max_size": 64},
    "solver": {"base_lr": 0.02, "ims_per_batch": BATCH, "unit_iters": WINDOW * WINDOWS,
               "drops_before_end": [WINDOW], "warmup_iters": 5, "eval_period": WINDOW},
    "grid": {"init": ["scratch"], "schedule": [1], "train_images": [200]},
    "lr": {"values": [0.02]},
    "resources": {"workers": 1, "cpus_per_worker": 1},
}


def _cfg(**resources: Any):
    from study.config import study_from_dict

    return study_from_dict({**TINY, "resources": {**TINY["resources"], **resources}})


def _trial():
    from study.plan.trials import Size, Trial

    return Trial(init="scratch", schedule=1, base_lr=0.02, seed=0, size=Size(200))


def _steady(rows: list[dict[str, Any]]) -> float:
    """Iterations/s after warm-up: the median of the windows after the first."""
    return statistics.median(r["images_per_s"] for r in rows[1:]) / BATCH


def _model_and_optimizer(num_classes: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The trial's model (tiny profile, scratch init, seed 0) in train mode and its SGD."""
    from models.init import init_scratch
    from models.mask_rcnn import build_mask_rcnn
    from study.train.build import build_sgd

    torch.manual_seed(0)
    model = build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=num_classes, profile="tiny",
                            min_size=64, max_size=64)
    init_scratch(model)
    model.train()
    return model, build_sgd(model, lr=0.02, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)


# --- overhead ------------------------------------------------------------------------------------


def plain_loop(data_root: Path) -> float:
    """torchvision's reference train_one_epoch, reduced to one process: iterations/s after warm-up."""
    from torch.utils.data import DataLoader

    from study.data.coco import collate
    from study.data.sampling import IterationBatchSampler
    from study.train.build import trial_datasets

    cfg = _cfg()
    train, _ = trial_datasets(cfg, _trial().size, data_root)
    model, optimizer = _model_and_optimizer(train.split.num_classes)
    sampler = IterationBatchSampler(len(train), BATCH, seed=0, start_iter=0, max_iter=WINDOW * WINDOWS)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    rates, tick = [], time.perf_counter()
    for it, (images, targets) in enumerate(loader, start=1):
        loss_dict = model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
        losses = sum(loss_dict.values())
        loss_value = losses.item()  # the reference logs it every iteration
        assert loss_value == loss_value
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        if it % WINDOW == 0:
            now = time.perf_counter()
            rates.append(WINDOW / (now - tick))
            tick = now
    return statistics.median(rates[1:])


VARIANTS = ("plain_loop", "train_trial", "ray_train_1w", "ray_train_2w")


def run_variant(variant: str, work: Path) -> float:
    """One variant, in this (fresh) process: steady iterations/s."""
    from study.tune.jobs import run_trial_on_ray
    from study.layout import read_metrics
    from study.train.loop import train_trial

    torch.set_num_threads(1)  # as in a 1-CPU Ray worker
    data, out = work / "data", work / variant
    if variant == "plain_loop":
        return plain_loop(data)
    if variant == "train_trial":
        train_trial(_cfg(), _trial(), out_dir=out, data_root=data)
    else:
        workers = int(variant[len("ray_train_")])
        run_trial_on_ray(_cfg(workers=workers), _trial(), out_dir=out, data_root=data,
                         storage=work / f"{variant}_train")  # its own Train run, never a resume
    return _steady(read_metrics(out))


def _child_result(what: str, returncode: int, stdout: str, stderr: str) -> str:
    """The payload of a child process's last `RESULT ` line; an error with its output's tail if it
    failed or printed none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode or not lines:
        raise RuntimeError(f"{what} failed (exit {returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return lines[-1][len("RESULT "):]


def overhead(work: Path) -> dict[str, Any]:
    """Every variant in a fresh process with the same environment (OMP_NUM_THREADS=1), in
    `ROUNDS` interleaved rounds; each variant's rate is the median over rounds."""
    from study.train.build import split_paths

    split_paths(_cfg(), work / "data")  # generated once, before any timing
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ro", dir="/tmp")}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(ROUNDS):
        for variant in VARIANTS:
            folder = work / f"round{round_}"
            folder.mkdir(exist_ok=True)
            if not (folder / "data").exists():
                (folder / "data").symlink_to(work / "data")
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, str(folder)], env=env,
                                  capture_output=True, text=True, timeout=900)
            rates[variant].append(float(_child_result(variant, proc.returncode, proc.stdout, proc.stderr)))
            walls[variant].append(time.perf_counter() - start)
    out: dict[str, Any] = {"rounds": ROUNDS, "iterations_per_run": WINDOW * WINDOWS, "batch": BATCH}
    for variant in VARIANTS:
        out[f"{variant}_it_s"] = statistics.median(rates[variant])
        out[f"{variant}_it_s_runs"] = [round(r, 3) for r in rates[variant]]
        out[f"{variant}_wall_s"] = statistics.median(walls[variant])
    for variant in VARIANTS[1:]:
        out[f"{variant}_vs_plain"] = out[f"{variant}_it_s"] / out["plain_loop_it_s"]
    return out


# --- loader --------------------------------------------------------------------------------------


def loader(work: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from study.data.coco import collate
    from study.data.sampling import IterationBatchSampler
    from study.train.steps import train_step
    from study.train.build import trial_datasets

    torch.set_num_threads(1)
    train, _ = trial_datasets(_cfg(), _trial().size, work / "data")
    n = 16 if QUICK else 60
    out: dict[str, Any] = {}
    for workers in (0, 2):
        sampler = IterationBatchSampler(len(train), BATCH, seed=0, start_iter=0, max_iter=n)
        dl = DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        start = time.perf_counter()
        batches = list(dl)
        out[f"loader_{workers}proc_ms_per_batch"] = 1000 * (time.perf_counter() - start) / n
    model, optimizer = _model_and_optimizer(train.split.num_classes)
    warm = n // 6
    for images, targets in batches[:warm]:  # warm-up
        train_step(model, images, targets, optimizer)
    start = time.perf_counter()
    for images, targets in batches[warm:]:
        train_step(model, images, targets, optimizer)
    out["step_ms"] = 1000 * (time.perf_counter() - start) / (n - warm)
    out["loader_share_in_process"] = out["loader_0proc_ms_per_batch"] / (
        out["loader_0proc_ms_per_batch"] + out["step_ms"])
    return out


# --- forking -------------------------------------------------------------------------------------


FORK_SPACE = {
    **TINY, "name": "forkbench",
    "data": {"synthetic": {"train_images": 24, "val_images": 8, "image_size": 64}},
    # the paper's proportions: drops 2/3 and 2/9 of 1x before the end, 1x..3x
    "solver": {"base_lr": 0.01, "ims_per_batch": 2, "unit_iters": 18, "drops_before_end": [12, 4],
               "warmup_iters": 1, "eval_period": 6},
    "grid": {"init": ["scratch"], "schedule": [1, 2, 3], "train_images": [16], "seeds": [0]},
    "lr": {"values": [0.01]},
    "resources": {"workers": 1, "cpus_per_worker": 1},
}


def forking(work: Path) -> dict[str, Any]:
    import ray

    from study.config import study_from_dict
    from study.tune.driver import run_study
    from study.plan.budget import plan_study
    from study.analysis.results import load_results
    from study.train.loop import TIMING_COLUMNS

    cfg = study_from_dict(FORK_SPACE)
    out: dict[str, Any] = {}
    frames = {}
    for label, fork in (("forked", True), ("separate", False)):
        start = time.perf_counter()
        try:
            run_study(cfg, storage=work / "fork", name=label, forking=fork, verbose=0)
        finally:
            ray.shutdown()
        out[f"{label}_wall_s"] = time.perf_counter() - start
        frames[label] = load_results(work / "fork" / label).sort_values(["trial", "iteration"]).reset_index(drop=True)
    plan = plan_study(cfg)
    out["forked_iterations"], out["separate_iterations"] = plan.iterations_forked, plan.iterations_separate
    a, b = frames["forked"], frames["separate"]
    same = a[["trial", "iteration"]].equals(b[["trial", "iteration"]])
    worst = 0.0
    for column in set(a.columns) - TIMING_COLUMNS - {"trial", "iteration"}:
        if a[column].dtype.kind == "f":
            diff = (a[column] - b[column]).abs().max()
            worst = max(worst, 0.0 if diff != diff else float(diff))
        else:
            same = same and a[column].tolist() == b[column].tolist()
    out["metrics_equal"] = bool(same and worst <= 1e-5)
    out["max_metric_difference"] = worst
    out["wall_ratio"] = out["forked_wall_s"] / out["separate_wall_s"]
    return out


# --- eval ----------------------------------------------------------------------------------------


def detections(coco_gt, seed: int = 0) -> list[dict[str, Any]]:
    """Plausible detections: every instance found with a jittered box and its mask shifted a
    pixel, a random score, plus one false positive per image."""
    import numpy as np

    from study.train.evaluation import masks_to_rle

    rng = np.random.default_rng(seed)
    dets = []
    for ann in coco_gt.dataset["annotations"]:
        info = coco_gt.imgs[ann["image_id"]]
        mask = np.roll(coco_gt.annToMask(ann), int(rng.integers(-1, 2)), axis=1)[None]
        x, y, w, h = ann["bbox"]
        box = [x + rng.normal(0, 1), y + rng.normal(0, 1), w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)]
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                     "score": float(rng.uniform(0.3, 1.0)), "segmentation": masks_to_rle(mask)[0]})
        if rng.uniform() < 1 / 3:  # false positives, about one per image
            fp = np.zeros((1, info["height"], info["width"]), dtype=np.uint8)
            fp[0, 5:20, 5:20] = 1
            dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [5, 5, 15, 15],
                         "score": float(rng.uniform(0, 0.5)), "segmentation": masks_to_rle(fp)[0]})
    return dets


def evaluation(work: Path) -> dict[str, Any]:
    from study.data.coco import load_coco
    from study.data.synthetic import SynthSpec, write_synthetic
    from study.train.evaluation import BACKENDS, evaluate_coco

    paths = write_synthetic(work / "evalset", SynthSpec(train_images=1, val_images=40 if QUICK else 300,
                                                        image_size=64, seed=3))
    gt = load_coco(paths.val_annotations, paths.val_images).coco
    dets = detections(gt)
    out: dict[str, Any] = {"images": len(gt.imgs), "instances": len(gt.dataset["annotations"]),
                           "detections": len(dets)}
    results, times = {}, {b: [] for b in BACKENDS}
    for backend in BACKENDS:
        evaluate_coco(gt, dets, "bbox", backend=backend)  # warm-up (imports, index building)
    for _ in range(3):  # interleaved; the fastest of 3 for each
        for backend in BACKENDS:
            start = time.perf_counter()
            results[backend] = {iou: evaluate_coco(gt, dets, iou, backend=backend) for iou in ("bbox", "segm")}
            times[backend].append(time.perf_counter() - start)
    for backend in BACKENDS:
        out[f"{backend}_s"] = min(times[backend])
    a, b = results.values()
    out["max_ap_difference"] = max(abs(a[iou][k] - b[iou][k]) for iou in a for k in a[iou])
    out["bbox_AP"], out["segm_AP"] = a["bbox"]["AP"], a["segm"]["AP"]
    names = list(BACKENDS)
    out["speedup"] = out[f"{names[0]}_s"] / out[f"{names[1]}_s"]
    return out


# --- ray -----------------------------------------------------------------------------------------


RAY_PROBE = r"""
import json, os, sys, time
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = sys.argv[1]
os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
import ray
from ray import tune
import ray.train
from ray.train.torch import TorchTrainer

def trial(config):
    tune.report({"x": config["x"]})

def loop(config):
    ray.train.report({"done": 1})

out = {}
start = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
out["ray_init_s"] = time.perf_counter() - start
for reuse in (True, False):
    start = time.perf_counter()
    tune.Tuner(trial, param_space={"x": tune.grid_search(list(range(8)))},
               tune_config=tune.TuneConfig(reuse_actors=reuse, max_concurrent_trials=2),
               run_config=tune.RunConfig(storage_path=sys.argv[2], name=f"tune_{reuse}", verbose=0)).fit()
    out[f"tune_trial_s_reuse_{reuse}"] = (time.perf_counter() - start) / 8
for workers in (1, 2):
    runs = []
    for rep in range(3):
        start = time.perf_counter()
        TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=workers),
                     run_config=ray.train.RunConfig(storage_path=sys.argv[2], name=f"train_{workers}_{rep}")).fit()
        runs.append(time.perf_counter() - start)
    out[f"ray_train_{workers}w_run_s"] = sorted(runs)[1]  # the median of 3
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def ray_costs(work: Path) -> dict[str, Any]:
    """Each health-check setting in its own process: Ray reads it when its processes start."""
    out: dict[str, Any] = {}
    for interval in ("0.25", "2"):
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rb", dir="/tmp")}
        proc = subprocess.run([sys.executable, "-c", RAY_PROBE, interval, str(work / f"ray_{interval}")],
                              capture_output=True, text=True, env=env, timeout=600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"the Ray probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        result = json.loads(lines[-1][7:])
        for key, value in result.items():
            if key.startswith("ray_train") or interval == "0.25":
                out[key if not key.startswith("ray_train") else f"{key}_health_{interval}s"] = value
    return out


# --- a finished study ----------------------------------------------------------------------------


def study_breakdown(run_dir: Path) -> dict[str, Any]:
    """Where a finished study's wall time went: its phases (run.json), and inside the trials'
    phase, training, evaluation and the rest (Ray, waiting for forks, process start), summed over
    trials from their metric logs (training time: each window's iterations at its images/s)."""
    from study.analysis.results import load_results, run_config

    info = json.loads((run_dir / "run.json").read_text())
    df = load_results(run_dir)
    forks = {}
    for trial in (run_dir / "trials").iterdir():
        fork = trial / "fork.json"
        forks[trial.name] = json.loads(fork.read_text())["iteration"] if fork.is_file() else 0
    train_s = eval_s = 0.0
    batch = None
    for name, rows in df.sort_values("iteration").groupby("trial"):
        prev = forks.get(name, 0)
        for _, r in rows.iterrows():
            if r["iteration"] <= forks.get(name, 0) or r["status"] != "running" and r["status"] != "finished":
                continue  # rows copied from the trunk were timed there
            batch = batch or int(round(r["images_seen"] / r["iteration"]))
            train_s += (r["iteration"] - prev) * batch / r["images_per_s"]
            eval_s += r.get("eval_s", 0.0) or 0.0
            prev = r["iteration"]
    phases = info.get("phases_s", {})
    trials = df["trial"].nunique()
    res = run_config(run_dir).get("resources", {})
    slots = res.get("max_concurrent_trials") or max(1, int(info["machine"]["cpus"]) // res.get("cpus_per_worker", 1))
    out = {"wall_s": info["seconds"], **{f"phase_{k}_s": v for k, v in phases.items()},
           "trials": trials, "concurrent_slots": slots, "train_s_summed": train_s, "eval_s_summed": eval_s}
    if "trials" in phases:  # slot-seconds of the trials phase not spent training or evaluating
        out["idle_or_overhead_per_trial_s"] = (phases["trials"] * slots - train_s - eval_s) / trials
    return out


# --- roofline ------------------------------------------------------------------------------------


def _matmul_gflops(threads: int, dtype: torch.dtype) -> float:
    """This machine's dense matmul rate (GFLOP/s) at `threads` threads: the best of a few runs."""
    n = 512 if QUICK else 2048
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3 if QUICK else 5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _counted_flops(step: Any) -> float:
    """FLOPs of one call of `step`, counted by torch's FlopCounterMode (convs, matmuls and their
    backward: the ops with a FLOP formula; RoIAlign, NMS and element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _timed(step: Any, warmup: int, runs: int) -> float:
    """Median seconds of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _roofline_row(step: Any, images: int, threads: int, bf16: bool, peaks: dict[str, float]) -> dict[str, Any]:
    torch.set_num_threads(threads)
    flops = _counted_flops(step)
    seconds = _timed(step, warmup=2, runs=3 if QUICK else 8)
    achieved = flops / seconds / 1e9
    peak = peaks[f"{'bf16' if bf16 else 'fp32'}_{threads}t"]
    return {"gflop_per_image": flops / images / 1e9, "images_per_s": images / seconds,
            "gflop_per_s": achieved, "peak_gflop_per_s": peak, "fraction_of_peak": achieved / peak,
            "threads": threads, "precision": "bf16 autocast" if bf16 else "fp32"}


def roofline(work: Path) -> dict[str, Any]:
    """GFLOP per image (counted), achieved GFLOP/s and the fraction of this machine's matmul peak,
    for one trial-loop step (the default study's detector, batch 4, one thread as a trial runs)
    and one pre-training step (the default stand-in classifier, batch 64, every core)."""
    from models.classifier import build_classifier
    from study.config import load_study
    from study.data.coco import collate
    from study.train.build import trial_datasets
    from study.train.precision import cpu_has_native_bf16
    from study.train.pretrain import build_pretrain_optimizer
    from study.train.steps import classifier_step, train_step

    cores = os.cpu_count() or 1
    native = cpu_has_native_bf16()
    peaks = {f"{name}_{t}t": _matmul_gflops(t, dtype) for t in sorted({1, cores})
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if name == "fp32" or native}
    out: dict[str, Any] = {"cores": cores, "native_bf16": native,
                           **{f"matmul_peak_{k}_gflop_per_s": v for k, v in peaks.items()}}
    precisions = (False, True) if native else (False,)

    train, _ = trial_datasets(_cfg(), _trial().size, work / "data")
    images, targets = collate([train[i] for i in range(BATCH)])
    model, optimizer = _model_and_optimizer(train.split.num_classes)
    for bf16 in precisions:
        row = _roofline_row(lambda: train_step(model, images, targets, optimizer, bf16=bf16),
                            BATCH, 1, bf16, peaks)
        out.update({f"trial_{'bf16' if bf16 else 'fp32'}_{k}": v for k, v in row.items()})

    pcfg = load_study(REPO / "search_spaces" / "default.yaml").pretrain
    batch = 16 if QUICK else pcfg.batch_size
    torch.manual_seed(0)
    classifier = build_classifier(backbone="resnet18", norm=pcfg.norm, num_classes=10)
    opt = build_pretrain_optimizer(classifier, pcfg)
    x, y = torch.randn(batch, 3, pcfg.image_size, pcfg.image_size), torch.randint(0, 10, (batch,))
    for bf16 in precisions:
        row = _roofline_row(lambda bf16=bf16: classifier_step(classifier, x, y, opt, bf16=bf16),
                            batch, cores, bf16, peaks)
        out.update({f"pretrain_{'bf16' if bf16 else 'fp32'}_{k}": v for k, v in row.items()})
    torch.set_num_threads(cores)
    return out


# --- levers --------------------------------------------------------------------------------------

# What each lever changes from the default study's trial (tiny profile, batch 4, fp32, one thread):
# precision, torch.compile of the backbone + FPN, images per batch (LR linear in the batch), the
# heads' widths, how many RoIs train the heads, and how many detections evaluation keeps.
LEVERS: dict[str, dict[str, Any]] = {
    "base": {},
    "bf16": {"bf16": True},
    "compile": {"compile": True},
    "batch2": {"batch": 2},
    "batch8": {"batch": 8},
    "heads64": {"profile": {"head_channels": 64, "box_fc": 256}},
    "rois64": {"profile": {"box_batch_per_image": 64, "rpn_post_nms_train": 300}},
    "detections50": {"profile": {"detections_per_image": 50}},
}
LEVER_SECONDS, LEVER_LR, LEVER_SEEDS = 60.0, 0.05, (0, 1)  # training budget per run; LR at batch 4
QUICK_LEVER_SECONDS, QUICK_LEVER_ITERATIONS = 1.0, 6  # --quick: each lever trains and evaluates, briefly


def _lever_storage(work: Path) -> Path:
    """runs/, where `study run` caches the default's data and backbone (a temporary folder if --quick)."""
    return work / "storage" if QUICK else REPO / "runs"


def _lever_weights(storage: Path) -> str:
    """The default study's pre-trained backbone, made first if `study run` has not cached it."""
    from study.config import load_study
    from study.tune.weights import study_weights

    cfg = load_study(REPO / "search_spaces" / "default.yaml")
    if QUICK:
        import dataclasses

        cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(
            cfg.pretrain, train_images=20, val_images=10, image_size=32, epochs=1, batch_size=10, warmup_iters=1))
    return study_weights(cfg, storage)


def run_lever(name: str, seed: int, work: Path) -> dict[str, Any]:
    """One lever, one seed, in this (fresh, one-thread) process: train the default study's pretrained
    detector for LEVER_SECONDS of wall time (the iteration count comes from a timing probe), with
    the default's schedule shape, then evaluate it once."""
    import dataclasses

    from torch.utils.data import DataLoader

    import models.mask_rcnn as mr
    from models.init import init_scratch, load_backbone
    from study.config import SolverConfig, load_study
    from study.data.coco import collate
    from study.data.sampling import IterationBatchSampler
    from study.plan.schedule import lr_at, schedule_for
    from study.plan.trials import Size
    from study.train.build import build_sgd, trial_datasets
    from study.train.steps import evaluate, train_step

    torch.set_num_threads(1)
    lever = LEVERS[name]
    cfg = load_study(REPO / "search_spaces" / "default.yaml")
    if QUICK:  # a small val set: the quick mode checks that each lever runs, it measures nothing
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, synthetic=dataclasses.replace(cfg.data.synthetic, train_images=60, val_images=12)))
    storage = _lever_storage(work)
    weights = _lever_weights(storage)
    train, val = trial_datasets(cfg, Size(40 if QUICK else 1000), storage / "data")
    mr.DETECTOR_PROFILES["lever"] = dataclasses.replace(mr.DETECTOR_PROFILES["tiny"], **lever.get("profile", {}))
    batch, bf16 = lever.get("batch", 4), lever.get("bf16", False)
    budget = QUICK_LEVER_SECONDS if QUICK else LEVER_SECONDS

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = mr.build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=train.split.num_classes,
                                   profile="lever", min_size=64, max_size=64)
        init_scratch(model)
        load_backbone(model, weights)
        if lever.get("compile"):  # quick: trace and run it without generating code (minutes otherwise)
            model.backbone = torch.compile(model.backbone, backend="aot_eager" if QUICK else "inductor")
        model.train()
        return model, build_sgd(model, lr=LEVER_LR, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)

    def batches(n: int) -> DataLoader:
        sampler = IterationBatchSampler(len(train), batch, seed=seed, start_iter=0, max_iter=n)
        return DataLoader(train, batch_sampler=sampler, collate_fn=collate)

    probe, probe_opt = build()  # the timing probe: its own model, thrown away
    times = []
    for images, targets in batches(5 if QUICK else 8):
        start = time.perf_counter()
        train_step(probe, images, targets, probe_opt, bf16=bf16)
        times.append(time.perf_counter() - start)
    s_per_iter = statistics.median(times[3:])
    iterations = max(QUICK_LEVER_ITERATIONS if QUICK else 20, int(budget / s_per_iter))
    # the default study's shape: warm-up 5/90 of the run, LR drops at 75/90 and 84/90
    solver = SolverConfig(base_lr=LEVER_LR * batch / 4, ims_per_batch=batch, unit_iters=iterations,
                          warmup_iters=max(1, iterations * 5 // 90),
                          drops_before_end=(max(2, iterations * 15 // 90), max(1, iterations * 6 // 90)))
    schedule = schedule_for(1, solver)
    if lever.get("compile"):
        torch._dynamo.reset()  # the run compiles afresh (the children run with inductor's caches off)
    start = time.perf_counter()
    model, optimizer = build()  # compile time, if any, counts
    for it, (images, targets) in enumerate(batches(iterations)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, schedule, solver)
        train_step(model, images, targets, optimizer, bf16=bf16)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(model, val)
    eval_s = time.perf_counter() - start
    return {"lever": name, "seed": seed, "iterations": iterations, "images": iterations * batch,
            "train_s": train_s, "eval_s": eval_s, "bbox_AP": metrics["bbox_AP"], "segm_AP": metrics["segm_AP"]}


def levers(work: Path) -> dict[str, Any]:
    """Each lever x seed in a fresh one-thread process, two at a time (as the default study runs its
    trials): bbox AP after the same wall time of training, and the evaluation's cost per point."""
    _lever_weights(_lever_storage(work))  # pre-train (or reuse) once, before the children race to
    jobs = [(name, seed) for name in LEVERS for seed in (LEVER_SEEDS[:1] if QUICK else LEVER_SEEDS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
           "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
    results: list[dict[str, Any]] = []
    slots = max(1, min(2, os.cpu_count() or 1))
    for first in range(0, len(jobs), slots):
        running = [(job, subprocess.Popen(
            [sys.executable, __file__, "--lever", job[0], str(job[1]), str(work), *(["--quick"] if QUICK else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
            for job in jobs[first:first + slots]]
        for job, proc in running:
            stdout, stderr = proc.communicate()
            results.append(json.loads(_child_result(f"lever {job}", proc.returncode, stdout, stderr)))
            print(f"  {job[0]:13s} seed {job[1]}: {results[-1]['iterations']} it, bbox AP "
                  f"{results[-1]['bbox_AP']:.1f}, eval {results[-1]['eval_s']:.1f} s", flush=True)
    out: dict[str, Any] = {"budget_s": QUICK_LEVER_SECONDS if QUICK else LEVER_SECONDS, "runs": results}
    for name in LEVERS:
        rows = [r for r in results if r["lever"] == name]
        for key in ("iterations", "train_s", "eval_s", "bbox_AP", "segm_AP"):
            out[f"{name}_{key}"] = statistics.fmean(r[key] for r in rows)
        out[f"{name}_bbox_AP_per_cpu_minute"] = 60 * out[f"{name}_bbox_AP"] / (
            out[f"{name}_train_s"] + out[f"{name}_eval_s"])
    return out


# --- step ---------------------------------------------------------------------------------------

# Each adds one lever to the one before it; the last is what a trial runs.
STEP_VARIANTS = ("torch_sgd", "fused_sgd", "small_maps", "roi_matmul")
STEP_WARMUP, STEP_TIMED = 10, 40
PAIR_BLOCKS, PAIR_STEPS = 30, 5  # run_roi_pair: 30 blocks of 5 steps per RoIAlign


def _torchvision_pools(model: Any) -> tuple[Any, Any]:
    """torchvision's MultiScaleRoIAlign in place of the detector's box and mask poolers (same levels,
    sizes and sampling ratio): its RoIAlign kernel forward and backward."""
    from torchvision.ops import MultiScaleRoIAlign

    return tuple(MultiScaleRoIAlign(p.featmap_names, p.output_size, p.sampling_ratio)
                 for p in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool))


def _step_setup(levers: tuple[str, ...], work: Path, batches: int) -> tuple[Any, ...]:
    """The default study's detector (scratch) with `levers` on, its optimizer, `batches` batches of
    its data, its val set and its precision, in this (one-thread) process."""
    import dataclasses

    import models.small_convs as small_convs
    from models.init import init_scratch
    from models.norms import parameter_groups
    from study.config import load_study
    from study.data.coco import collate
    from study.plan.trials import Size
    from study.train.build import build_detector, build_sgd, trial_datasets
    from study.train.precision import cpu_has_native_bf16

    torch.set_num_threads(1)
    if "small_maps" not in levers:
        small_convs.MAX_POSITIONS = 0  # every conv through oneDNN
    cfg = load_study(REPO / "search_spaces" / "default.yaml")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synthetic=dataclasses.replace(
        cfg.data.synthetic, train_images=200, val_images=12 if QUICK else 200)))
    train, val = trial_datasets(cfg, Size(200), work / "data")
    torch.manual_seed(0)
    model = build_detector(cfg, train.split.num_classes)
    if "roi_matmul" not in levers:  # torchvision's RoIAlign kernel
        model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = _torchvision_pools(model)
    init_scratch(model)
    model.train()
    if "fused_sgd" in levers:
        optimizer = build_sgd(model, lr=0.04, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    else:
        optimizer = torch.optim.SGD(parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0),
                                    lr=0.04, momentum=0.9)
    data = [collate([train[(i * BATCH + j) % len(train)] for j in range(BATCH)]) for i in range(batches)]
    return model, optimizer, data, val, cpu_has_native_bf16()


def run_step_variant(variant: str, work: Path) -> dict[str, Any]:
    """One step variant, in this (fresh, one-thread) process: ms per training step (the default
    study's detector, scratch, batch 4, its precision) and seconds to predict its val set in fp32
    and in bf16 (bf16 only where the CPU has it natively)."""
    from study.train.steps import predict, train_step

    warmup, timed = (2, 4) if QUICK else (STEP_WARMUP, STEP_TIMED)
    levers = STEP_VARIANTS[:STEP_VARIANTS.index(variant) + 1]
    model, optimizer, batches, val, bf16 = _step_setup(levers, work, warmup + timed)
    for images, targets in batches[:warmup]:
        train_step(model, images, targets, optimizer, bf16=bf16)
    start = time.perf_counter()
    for images, targets in batches[warmup:]:
        train_step(model, images, targets, optimizer, bf16=bf16)
    out = {"variant": variant, "step_ms": 1000 * (time.perf_counter() - start) / timed, "bf16": bf16,
           "val_images": len(val)}
    for name, on in (("fp32", False), ("bf16", True)):
        if on and not bf16:
            continue
        predict(model, val, indices=list(range(4)), bf16=on)  # warm-up
        start = time.perf_counter()
        predict(model, val, bf16=on)
        out[f"predict_{name}_s"] = time.perf_counter() - start
    return out


def run_roi_pair(work: Path) -> dict[str, Any]:
    """The last lever measured paired, in one process: the same model and optimizer train blocks of
    `PAIR_STEPS` steps, alternating torchvision's RoIAlign and `models.roi_align`'s (which goes
    first alternates too), so both see the same stage of training and the same state of the
    machine. Returns each block's ms per step and the median of the per-pair ratios."""
    from study.train.steps import train_step

    blocks, steps = (2, 1) if QUICK else (PAIR_BLOCKS, PAIR_STEPS)
    model, optimizer, batches, _, bf16 = _step_setup(STEP_VARIANTS, work, STEP_WARMUP + blocks * steps)
    ours, theirs = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool), _torchvision_pools(model)
    for images, targets in batches[:STEP_WARMUP]:
        train_step(model, images, targets, optimizer, bf16=bf16)
    ms: dict[str, list[float]] = {"torchvision": [], "matmul": []}
    for block in range(blocks):
        order = [("torchvision", theirs), ("matmul", ours)]
        for name, pools in order if block % 2 == 0 else order[::-1]:
            model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = pools
            start = time.perf_counter()
            for images, targets in batches[STEP_WARMUP + block * steps:STEP_WARMUP + (block + 1) * steps]:
                train_step(model, images, targets, optimizer, bf16=bf16)
            ms[name].append(1000 * (time.perf_counter() - start) / steps)
    ratios = [a / b for a, b in zip(ms["matmul"], ms["torchvision"])]
    return {"blocks": blocks, "steps_per_block": steps, "torchvision_ms": ms["torchvision"], "matmul_ms": ms["matmul"],
            "torchvision_median_ms": statistics.median(ms["torchvision"]),
            "matmul_median_ms": statistics.median(ms["matmul"]), "matmul_vs_torchvision_median": statistics.median(ratios)}


def step(work: Path) -> dict[str, Any]:
    """Every step variant in a fresh one-thread process, `ROUNDS` interleaved rounds, one at a time;
    each number is the median over rounds, and each lever's ratio is to the variant before it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        for variant in STEP_VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--step", variant, str(work),
                                   *(["--quick"] if QUICK else [])], env=env, capture_output=True, text=True,
                                  timeout=900, cwd=REPO)
            runs.append({"round": round_,
                         **json.loads(_child_result(f"step {variant}", proc.returncode, proc.stdout, proc.stderr))})
            print(f"  round {round_} {variant:12s} {runs[-1]['step_ms']:.1f} ms/step", flush=True)
    out: dict[str, Any] = {"rounds": ROUNDS, "batch": BATCH, "runs": runs}
    for variant in STEP_VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        for key in ("step_ms", "predict_fp32_s", "predict_bf16_s"):
            if key in rows[0]:
                out[f"{variant}_{key}"] = statistics.median(r[key] for r in rows)
    for before, after in zip(STEP_VARIANTS, STEP_VARIANTS[1:]):
        out[f"{after}_vs_{before}"] = out[f"{after}_step_ms"] / out[f"{before}_step_ms"]
    out[f"{STEP_VARIANTS[-1]}_vs_{STEP_VARIANTS[0]}"] = (out[f"{STEP_VARIANTS[-1]}_step_ms"]
                                                        / out[f"{STEP_VARIANTS[0]}_step_ms"])
    last = STEP_VARIANTS[-1]
    if f"{last}_predict_bf16_s" in out:
        out["predict_bf16_vs_fp32"] = out[f"{last}_predict_bf16_s"] / out[f"{last}_predict_fp32_s"]
    return out


def roi_pair(work: Path) -> dict[str, Any]:
    """`run_roi_pair` in a fresh one-thread process."""
    proc = subprocess.run([sys.executable, __file__, "--roi-pair", str(work), *(["--quick"] if QUICK else [])],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=1800, cwd=REPO)
    return json.loads(_child_result("roi pair", proc.returncode, proc.stdout, proc.stderr))


# --- the table -----------------------------------------------------------------------------------


QUICK = False  # --quick: smaller sizes, for the test that keeps this script working
DEFAULT_ROUNDS = ROUNDS = 2

PARTS = {"overhead": overhead, "loader": loader, "forking": forking, "eval": evaluation, "ray": ray_costs,
         "roofline": roofline, "levers": levers, "step": step,
         "roi_pair": roi_pair}


def main() -> None:
    from study.tune.driver import machine

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts (default: {','.join(PARTS)})")
    p.add_argument("--study", type=Path, default=None, help="a finished study run to break down")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "study-bench" / "suite.json",
                   help="where the results go (default: outside the repository, in the temp folder)")
    p.add_argument("--quick", action="store_true", help="smaller sizes: checks that it runs, measures little")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds of the overhead and step parts (default {DEFAULT_ROUNDS})")
    p.add_argument("--variant", nargs=2, metavar=("VARIANT", "DIR"), help=argparse.SUPPRESS)  # overhead's child
    p.add_argument("--lever", nargs=3, metavar=("LEVER", "SEED", "DIR"), help=argparse.SUPPRESS)  # levers' child
    p.add_argument("--step", nargs=2, metavar=("VARIANT", "DIR"), help=argparse.SUPPRESS)  # step's child
    p.add_argument("--roi-pair", metavar="DIR", help=argparse.SUPPRESS)  # roi_pair's child
    args = p.parse_args()
    global QUICK, ROUNDS
    QUICK = args.quick
    ROUNDS = 1 if QUICK else args.rounds  # quick checks that each variant runs: one round does
    if args.variant:
        print(f"RESULT {run_variant(args.variant[0], Path(args.variant[1]))}")
        return
    if args.lever:
        print(f"RESULT {json.dumps(run_lever(args.lever[0], int(args.lever[1]), Path(args.lever[2])))}")
        return
    if args.step:
        print(f"RESULT {json.dumps(run_step_variant(args.step[0], Path(args.step[1])))}")
        return
    if args.roi_pair:
        print(f"RESULT {json.dumps(run_roi_pair(Path(args.roi_pair)))}")
        return
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        for part in chosen:
            start = time.perf_counter()
            print(f"[{part}] ...", flush=True)
            report["parts"][part] = PARTS[part](Path(tmp))
            print(f"[{part}] done in {time.perf_counter() - start:.0f} s", flush=True)
    if args.study is not None:
        report["parts"]["study"] = study_breakdown(args.study)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    m = report["machine"]
    print(f"\nmachine: {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}; {report['date']}")
    print(f"{'part':10s} {'measure':44s} value")
    for part, values in report["parts"].items():
        for key, value in values.items():
            if isinstance(value, list):  # per-run rows: in the JSON only
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{part:10s} {key:44s} {shown}")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
