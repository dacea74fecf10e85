"""The GPU scripts run here (reduced, dry or rehearsal modes on the CPU), so they cannot rot while
no GPU is around; and the benchmark suite runs."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the benchmark scripts run end to end: the full suite, not the fast lane


def test_the_gpu_check_runs_in_reduced_mode() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--reduced", "--iters", "2",
                          "--warmup", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert re.search(r"resnet18-FPN GN \(tiny profile, 64x64\), 2 images/iteration, .* "
                     r"[0-9.]+ s/iter, [0-9.]+ images/s; last loss [0-9.]+$", line), line


def test_the_full_check_refuses_a_machine_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine the full check is a benchmark, not a test
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--iters", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2 and "no GPU here" in out.stderr


def test_the_multi_gpu_check_skips_with_a_reason_without_a_gpu() -> None:
    """bench/gpu_distributed.py without a GPU (CI): every check's configuration is built and
    validated, then it says why it skips and exits 0; --dry does the same on a GPU machine."""
    import torch

    args = [] if not torch.cuda.is_available() else ["--dry"]
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_distributed.py"), *args],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    for check in ("collectives", "trial", "nan drill", "kill/resume", "syncbn bf16", "pretrain"):
        assert f"  {check}: configuration valid" in out.stdout
    reason = "--dry" if args else "no CUDA device here (torch.cuda.is_available() is False)"
    assert out.stdout.strip().splitlines()[-1].startswith(f"SKIPPED: {reason}")


@pytest.mark.slow
def test_the_multi_gpu_check_rehearses_on_the_cpu(tmp_path) -> None:
    """bench/gpu_distributed.py --cpu: every check but SyncBN's runs through Ray Train's gloo group of
    one worker and passes; the kill lands and the resumed rows equal the straight ones exactly."""
    import json

    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_distributed.py"), "--cpu",
                          "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["check"], r["ok"]) for r in rows] == [(c, True) for c in ("collectives", "trial", "nan drill",
                                                                          "kill/resume", "pretrain")]
    kill = next(r["detail"] for r in rows if r["check"] == "kill/resume")
    assert "killed after the checkpoint of iteration" in kill and "largest |resumed - straight| 0 " in kill
    assert "| check | result | seconds | detail |" in out.stdout


def test_the_gpu_trial_script_resumes_exactly_on_the_cpu() -> None:
    """bench/gpu_trial.py on the CPU: the stopped-and-resumed history equals the straight one."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_trial.py"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("trial scratch_2x_n16_lr0.01_s0 on CPU: largest |straight - resumed| "), last
    assert last.endswith("loss 0, loss_classifier 0, loss_mask 0, bbox_AP 0, segm_AP 0"), last
    assert out.stdout.count(" finished ") == 2


def test_the_benchmark_suite_runs(tmp_path) -> None:
    """bench/suite.py --quick on its cheap parts: the table and the JSON come out, with the
    evaluation backends agreeing and every step lever measured (one round in quick mode)."""
    import json

    out = subprocess.run([sys.executable, str(REPO / "bench" / "suite.py"), "--only", "eval,loader,step,roi_pair",
                          "--quick", "--out", str(tmp_path / "suite.json")], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "suite.json").read_text())
    assert set(report["parts"]) == {"eval", "loader", "step", "roi_pair"} and report["machine"]["cpus"] >= 1
    assert report["parts"]["eval"]["max_ap_difference"] < 1e-4 and report["parts"]["eval"]["images"] == 40
    assert report["parts"]["loader"]["step_ms"] > 0
    step = report["parts"]["step"]
    variants = ["torch_sgd", "fused_sgd", "small_maps", "roi_matmul"]
    assert [r["variant"] for r in step["runs"]] == variants
    assert all(step[f"{v}_step_ms"] > 0 for v in variants)
    assert step["roi_matmul_vs_torch_sgd"] == step["roi_matmul_step_ms"] / step["torch_sgd_step_ms"]
    assert step["roi_matmul_vs_small_maps"] == step["roi_matmul_step_ms"] / step["small_maps_step_ms"]
    pair = report["parts"]["roi_pair"]
    assert len(pair["torchvision_ms"]) == len(pair["matmul_ms"]) == pair["blocks"] == 2
    assert pair["matmul_vs_torchvision_median"] == statistics.median(
        [a / b for a, b in zip(pair["matmul_ms"], pair["torchvision_ms"])])
    assert "eval       speedup" in out.stdout


def test_the_roofline_part_counts_flops_and_its_fraction_of_peak(tmp_path) -> None:
    """FLOPs are counted, not guessed: ResNet-18 at 64 px is ~0.87 GFLOP per image forward +
    backward (3 x its 0.30 GFLOP forward), the default's detector step ~1.9."""
    import json

    out = subprocess.run([sys.executable, str(REPO / "bench" / "suite.py"), "--only", "roofline", "--quick",
                          "--out", str(tmp_path / "suite.json")], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "suite.json").read_text())["parts"]["roofline"]
    assert 0.8 < r["pretrain_fp32_gflop_per_image"] < 0.95 and 1.5 < r["trial_fp32_gflop_per_image"] < 2.5
    for workload in ("trial", "pretrain"):
        row = {k.removeprefix(f"{workload}_fp32_"): v for k, v in r.items() if k.startswith(f"{workload}_fp32_")}
        assert row["fraction_of_peak"] == pytest.approx(row["gflop_per_s"] / row["peak_gflop_per_s"])
        assert row["gflop_per_s"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"])
    assert ("trial_bf16_fraction_of_peak" in r) == r["native_bf16"]


@pytest.mark.slow
def test_the_levers_part_runs(tmp_path) -> None:
    """bench/suite.py --only levers --quick: every lever trains, evaluates and is tabled."""
    import json

    out = subprocess.run([sys.executable, str(REPO / "bench" / "suite.py"), "--only", "levers", "--quick",
                          "--out", str(tmp_path / "suite.json")], capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    levers = json.loads((tmp_path / "suite.json").read_text())["parts"]["levers"]
    names = {"base", "bf16", "compile", "batch2", "batch8", "heads64", "rois64", "detections50"}
    assert {r["lever"] for r in levers["runs"]} == names
    assert all(r["iterations"] >= 6 and r["eval_s"] > 0 and 0 <= r["bbox_AP"] <= 100 for r in levers["runs"])
    assert levers["batch8_iterations"] == 6 and "levers     bf16_bbox_AP_per_cpu_minute" in out.stdout


def test_the_sizing_script_runs(tmp_path) -> None:
    """bench/sizing.py on one variant, two evaluation points: the table and the JSON come out."""
    import json

    out = subprocess.run([sys.executable, str(REPO / "bench" / "sizing.py"), "--variants", "base,rois128",
                          "--images", "8,16", "--seeds", "0", "--val-images", "4", "--data", str(tmp_path / "d"),
                          "--json", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "s.json").read_text())["results"]
    assert [(r["variant"], sorted(r["evals"])) for r in results] == [("base", ["16", "8"]), ("rois128", ["16", "8"])]
    assert results[1]["settings"]["profile"]["box_batch_per_image"] == 128
    assert "bbox AP after N training images" in out.stdout


def test_the_other_shapes_set_holds_only_classes_the_detector_does_not_detect(tmp_path) -> None:
    from study.data.classification import load_image_folder
    from study.data.synthetic import CLASSES

    out = subprocess.run([sys.executable, str(REPO / "bench" / "other_shapes.py"), "--out", str(tmp_path / "o"),
                          "--train-images", "10", "--val-images", "5"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    train, val, classes = load_image_folder(tmp_path / "o", 64)
    assert classes == sorted(["pentagon", "cross", "ring", "crescent", "arrow"]) and not set(classes) & set(CLASSES)
    assert (len(train), len(val)) == (10, 5) and sorted(train.targets) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_the_sequential_designs_table_prints_a_row_per_design() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "sequential_designs.py"), "--studies", "40"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = out.stdout.strip().splitlines()
    assert rows[0].startswith("| design | null: SUPPORTED") and len(rows) == 2 + 11
    assert rows[5].startswith("| 4, then 5 seeds, obrien-fleming |")
