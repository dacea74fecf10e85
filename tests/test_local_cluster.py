"""`ray start --head` + `study run --address auto` (the cluster path, on one machine), and the
TensorBoard event files Tune writes per trial."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_study_run_joins_a_running_cluster(tmp_path: Path) -> None:
    # this cluster's session files only, under a short path (Ray's AF_UNIX sockets: <= 107 bytes)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--resources",
                            '{"TRAIN_DRIVER": 2}', "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        run = subprocess.run([str(BIN / "study"), "run", str(REPO / "search_spaces" / "smoke.yaml"),
                              "--address", "auto", "--storage", str(tmp_path / "runs")],
                             env=env, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "study smoke done" in run.stdout
    assert "Started a local Ray instance" not in run.stdout + run.stderr  # it joined, it did not start one
    events = list((tmp_path / "runs" / "smoke" / "tune").rglob("events.out.tfevents.*"))
    assert len(events) == 4  # one per trial
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for path in events:  # read as `tensorboard --logdir` reads them
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in ("ray/tune/bbox_AP", "ray/tune/segm_AP", "ray/tune/loss", "ray/tune/images_seen"):
            assert tag in acc.Tags()["scalars"], (path.name, tag)
        points.append(len(acc.Scalars("ray/tune/bbox_AP")))
    assert sorted(points) == [2, 2, 4, 4]  # one AP point per evaluation: 1x at 3, 6; 2x at 3, 6, 9, 12
