"""`ray start --head` + `study run --address auto` (the cluster path, on one machine), and the
TensorBoard event files Tune writes per trial."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def cluster_pids(marker: str) -> set[int]:
    """The processes of the Ray cluster whose session files are under `marker` (their command
    lines name it) and all their descendants (workers and agents, whose command lines do not)."""
    parents, named = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it exited while being read
        parents[int(entry.name)] = ppid
        if marker in cmdline:
            named.add(int(entry.name))
    mine, pid = set(), os.getpid()  # this process and its ancestors are never the cluster's
    while pid > 1 and pid not in mine:
        mine.add(pid)
        pid = parents.get(pid, 1)
    found, grew = named - mine, True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found - mine
        found |= children
        grew = bool(children)
    return found


def stop_cluster(marker: str, grace_s: float = 10.0) -> None:
    """Stop only this test's cluster. `ray stop --force` would also kill every other Ray session
    of the user on the machine, such as a study running beside the tests."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while cluster_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_stopping_the_test_cluster_spares_other_processes(tmp_path: Path) -> None:
    """Only the processes that name the marker, and their children, are stopped."""
    ours = subprocess.Popen(["bash", "-c", "sleep 60 & wait", str(tmp_path / "ours")])
    other = subprocess.Popen(["bash", "-c", "sleep 60 & wait", str(tmp_path / "other")])
    try:
        deadline = time.monotonic() + 10
        while (min(len(cluster_pids(str(tmp_path / name))) for name in ("ours", "other")) < 2
               and time.monotonic() < deadline):
            time.sleep(0.1)  # until both shells have started their sleep
        assert len(cluster_pids(str(tmp_path / "ours"))) == 2  # bash and its sleep
        stop_cluster(str(tmp_path / "ours"), grace_s=5)
        assert ours.wait(timeout=5) == -signal.SIGTERM
        assert not cluster_pids(str(tmp_path / "ours"))
        assert other.poll() is None and len(cluster_pids(str(tmp_path / "other"))) == 2
    finally:
        stop_cluster(str(tmp_path / "other"), grace_s=5)
        for proc in (ours, other):
            proc.kill()
            proc.wait()


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
        stop_cluster(ray_tmp)
        left = cluster_pids(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"processes of the test's cluster still running: {sorted(left)}"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "study smoke done" in run.stdout
    assert "Started a local Ray instance" not in run.stdout + run.stderr  # it joined, it did not start one
    events = list((tmp_path / "runs" / "smoke" / "tune").rglob("events.out.tfevents.*"))
    assert len(events) == 4  # one per trial
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ap_steps, loss_steps = [], []
    for path in events:  # read as `tensorboard --logdir` reads them
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in ("ray/tune/bbox_AP", "ray/tune/segm_AP", "ray/tune/loss", "ray/tune/images_seen"):
            assert tag in acc.Tags()["scalars"], (path.name, tag)
        ap_steps.append([e.step for e in acc.Scalars("ray/tune/bbox_AP")])
        loss_steps.append([e.step for e in acc.Scalars("ray/tune/loss")])
    # the x-axis is the iteration; AP only at evaluations: 1x at 3, 6; 2x at 3, 6, 9, 12
    assert sorted(ap_steps) == [[3, 6], [3, 6], [3, 6, 9, 12], [3, 6, 9, 12]]
    # the losses also every log_period (2) between them: a 2x trunk at 2, 3, 4, 6, 8, 9, 10, 12
    assert [2, 3, 4, 6, 8, 9, 10, 12] in loss_steps
    assert all(set(ap) < set(loss) for ap, loss in zip(ap_steps, loss_steps))
