"""One trial as a Ray Train job: two workers train what one process does, and a killed worker's
group resumes from the last checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.config import StudyConfig, study_from_dict, to_dict
from study.layout import read_metrics
from study.plan.trials import Trial


@pytest.mark.slow
def test_a_trial_on_two_ray_train_workers(tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    """2 CPU workers (gloo, DDP): trains, evaluates on shards gathered to rank 0, checkpoints."""
    import ray

    from study.tune.jobs import run_trial_on_ray

    cfg = study_from_dict({**to_dict(tiny_cfg),
                           "resources": {"workers": 2}})
    try:
        result = run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path)
    finally:
        ray.shutdown()
    rows = read_metrics(tmp_path / "t")
    assert [r["iteration"] for r in rows] == [4, 8] and rows[-1]["status"] == "finished"
    assert rows[-1]["images_seen"] == 8 * 4  # both ranks' images, counted once
    assert result.checkpoint is not None and result.metrics["iteration"] == 8
    assert math.isfinite(rows[-1]["loss"]) and 0.0 <= rows[-1]["bbox_AP50"] <= 100.0


@pytest.mark.slow
def test_a_killed_ray_train_worker_resumes_from_the_checkpoint(tmp_path: Path,
                                                               tiny_cfg: StudyConfig,
                                                               tiny_trial: Trial) -> None:
    """SIGKILL rank 1 after the first checkpoint: Ray Train restarts the worker group, every rank
    resumes at iteration 4 from the checkpoint, and the run ends as an uninterrupted one does."""
    import os
    import signal
    import threading
    import time

    import ray
    from ray.util.state import list_actors

    from study.tune.jobs import run_trial_on_ray

    cfg = study_from_dict({**to_dict(tiny_cfg), "solver": {**to_dict(tiny_cfg.solver), "unit_iters": 12,
                                                        "drops_before_end": [6, 3]},
                           "resources": {"workers": 2, "max_failures": 1}})
    killed: list[int] = []

    def kill_rank_1_after_the_first_checkpoint() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not read_metrics(tmp_path / "killed"):
            time.sleep(0.05)
        # this test's Ray instance (another one on the machine must not make the lookup ambiguous)
        address = ray.get_runtime_context().gcs_address
        workers = [a for a in list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                                    ("state", "=", "ALIVE")])]
        pid = max(a.pid for a in workers)  # either rank will do; one worker is enough
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    try:
        whole = run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "whole", data_root=tmp_path,
                                 storage=tmp_path / "ray_whole")
        killer = threading.Thread(target=kill_rank_1_after_the_first_checkpoint, daemon=True)
        killer.start()
        run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "killed", data_root=tmp_path,
                         storage=tmp_path / "ray_killed")
        killer.join(timeout=10)
    finally:
        ray.shutdown()
    assert killed, "no worker was killed"
    rows, want = read_metrics(tmp_path / "killed"), read_metrics(tmp_path / "whole")
    assert whole.metrics["iteration"] == 12
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in want] == [4, 8, 12]
    assert rows[-1]["status"] == "finished" and rows[-1]["images_seen"] == want[-1]["images_seen"]
    for key in ("loss", "loss_classifier", "bbox_AP", "segm_AP"):
        assert rows[-1][key] == pytest.approx(want[-1][key], abs=1e-3), key
