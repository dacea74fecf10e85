"""A worker node lost mid-trial, for real: a Ray cluster of three nodes on this machine
(`ray.cluster_utils.Cluster`: a head with no CPUs for trials, and two 1-CPU worker nodes, each
with its own local folder, STUDY_LOCAL_DIR), the study's storage on shared storage: the S3
stand-in for one-worker trials, a `file://` URI for the multi-worker one. After a trial's first
checkpoint has reached the storage, the node it runs on is removed (all its processes killed:
raylet, object store, workers) and its local folder deleted, as a spot node that goes away takes its disk with it. The trial is retried on the
surviving node, resumes from its checkpoint in the shared storage, and ends with every evaluation
row once and the metrics of an uninterrupted run; the study's other trial is not touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from study import layout
from study.config import load_study
from study.plan.trials import Size, Trial
from study.tune.storage import Store, pull_files
from tests.conftest import REPO, assert_same_curve

SPACE = """\
name: node
data: {source: synthetic, synthetic: {train_images: 24, val_images: 8, image_size: 64}}
model: {backbone: resnet18, norm: gn, profile: tiny, min_size: 64, max_size: 64}
solver: {base_lr: 0.01, ims_per_batch: 2, unit_iters: 12, drops_before_end: [6, 2], warmup_iters: 1, eval_period: 6}
grid: {init: [scratch], schedule: [2], train_images: [16], seeds: [0]}
lr: {values: [0.01, 0.02]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2, max_failures: 1}
"""
# A checkpoint (94 MB: the tiny detector and its momentum) at every evaluation, every EVERY
# iterations: 4 per trial, each sent through the store
EVERY = yaml.safe_load(SPACE)["solver"]["eval_period"]
# GCS declares a node dead after 3 missed health checks, 1 s apart (Ray's default is 5 of 3 s)
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def _rows(path: Path) -> list[dict]:
    return layout.read_metrics(path) if path.is_dir() else []


class LocalCluster:
    """A head (no CPUs for trials, the TRAIN_DRIVER tokens) and 1-CPU worker nodes, each started
    with its own STUDY_LOCAL_DIR (tmp_path/node_<label>): its disk."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        from ray.cluster_utils import Cluster

        self.tmp_path, self.monkeypatch = tmp_path, monkeypatch
        self.ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's AF_UNIX sockets want a short path
        monkeypatch.setenv("RAY_TMPDIR", self.ray_tmp)
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "resources": {"TRAIN_DRIVER": 2}, "_system_config": HEALTH})
        self.nodes: dict[str, object] = {}

    def add(self, label: str) -> None:
        self.monkeypatch.setenv("STUDY_LOCAL_DIR", str(self.disk(label)))
        self.nodes[label] = self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()

    def disk(self, label: str) -> Path:
        return self.tmp_path / f"node_{label}"

    def busy(self, label: str) -> bool:
        """Whether a trial (or a Ray Train worker of one) works in this node's local folder now."""
        work = self.disk(label) / "work"
        return work.is_dir() and any(p.name.startswith("trial-") for p in work.iterdir())

    def processes(self, label: str) -> list[int]:
        """The node's processes: its raylet and everything started from it (they inherited its
        STUDY_LOCAL_DIR), the trial's own process included."""
        mark = f"STUDY_LOCAL_DIR={self.disk(label)}".encode()
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark in environ.read_bytes().split(b"\0"):
                    pids.append(int(environ.parent.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
        return pids

    def lose(self, label: str) -> None:
        """The node vanishes: every process of it killed at once (the trial's worker too: it
        would otherwise live on for a moment after its raylet), then its disk deleted."""
        for pid in self.processes(label):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cluster.remove_node(self.nodes.pop(label), allow_graceful=False)
        shutil.rmtree(self.disk(label))

    def shutdown(self) -> None:
        self.cluster.shutdown()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _run_study(space: Path, cluster: LocalCluster, storage: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "STUDY_LOCAL_DIR": str(cluster.tmp_path / "driver"), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(space), "--address",
                                 cluster.cluster.address, "--storage", storage], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def _copy_trials(store: Store, dest: Path) -> Path:
    """The study's trials as they are in the store now (metric logs and checksums), in `dest`."""
    shutil.rmtree(dest, ignore_errors=True)
    for name in store.listdir(layout.trial_path("node")):
        pull_files(store, layout.trial_path("node", name), dest / name, [layout.METRICS, layout.CHECKSUMS])
    return dest


def _checkpointed(store: Store, scratch: Path) -> list[Path]:
    """Trials with a checkpoint in the store (recorded in checksums.json) and still running."""
    trials = _copy_trials(store, scratch)
    return [d for d in (trials.iterdir() if trials.is_dir() else [])
            if layout.CHECKPOINT in layout.read_checksums(d) and _rows(d) and _rows(d)[-1]["status"] == "running"]


def _assert_resumed_once(out: str, name: str, rows_at_loss: list[dict]) -> None:
    """The log says `name` resumed from its last checkpoint in the store (its last row, or the one
    before if the node went between a row and its checkpoint)."""
    last = rows_at_loss[-1]["iteration"]
    assert (f"{name}: resuming from the checkpoint of iteration {last}" in out
            or f"{name}: resuming from the checkpoint of iteration {last - EVERY}" in out), out[-5000:]


def _lose_a_node_when(study: subprocess.Popen, store: Store, seen: Path,
                      ready: Callable[[list[Path]], bool], lose: Callable[[], None]) -> list[Path]:
    """Watch the store until `ready(trials checkpointed and still running)`, then `lose()` a node;
    wait for the study to end. Returns the trials as they were when the node went ([] if never)."""
    try:
        deadline = time.time() + 300
        while time.time() < deadline and study.poll() is None:
            started = _checkpointed(store, seen)
            if ready(started):  # `seen` is not copied again: it stays as it was at the loss
                lose()
                study.wait(timeout=400)
                return started
            time.sleep(0.25)  # each look copies the trials' logs from the store: not too often
        return []
    finally:
        if study.poll() is None:
            study.kill()


@pytest.mark.slow
def test_a_trial_whose_node_is_lost_resumes_on_another_from_shared_storage(
        tmp_path: Path, monkeypatch, s3_uri: str) -> None:
    space = tmp_path / "node.yaml"
    space.write_text(SPACE)
    uri = s3_uri  # its credentials are in the environment before the nodes start: they inherit them
    store = Store(uri)
    cluster = LocalCluster(tmp_path, monkeypatch)
    killed_at: dict[str, list[dict]] = {}
    try:
        cluster.add("a")
        cluster.add("b")
        study = _run_study(space, cluster, uri, tmp_path / "study.log")
        # one trial on each node; the head has no CPU for trials: the retry can only go to b
        lost = _lose_a_node_when(study, store, tmp_path / "seen",
                                 lambda started: len(started) == 2 and cluster.busy("a") and cluster.busy("b"),
                                 lambda: cluster.lose("a"))
        killed_at = {d.name: _rows(d) for d in lost}
    finally:
        cluster.shutdown()
    out = (tmp_path / "study.log").read_text()
    assert killed_at, "no moment with both trials past a checkpoint:\n" + out[-3000:]
    assert study.returncode == 0, out[-5000:]
    assert not cluster.disk("a").exists()  # nothing of the lost node ran on
    resumed = [name for name in killed_at if f"{name}: resuming from the checkpoint of iteration" in out]
    assert len(resumed) == 1, out[-5000:]  # the trial on the lost node, and only it
    _assert_resumed_once(out, resumed[0], killed_at[resumed[0]])

    import torch

    from study.train.loop import train_trial

    cfg = load_study(space)
    torch.set_num_threads(1)  # as the trials (cpus_per_worker: 1)
    trials = _copy_trials(store, tmp_path / "final")
    assert len(list(trials.iterdir())) == 2
    for trial_dir in sorted(trials.iterdir()):  # both: every evaluation once, as if uninterrupted
        rows = layout.read_metrics(trial_dir)
        alone = tmp_path / "alone" / trial_dir.name
        train_trial(cfg, Trial(init="scratch", schedule=2, base_lr=rows[-1]["base_lr"], seed=0, size=Size(16)),
                    out_dir=alone, data_root=tmp_path / "data")
        assert rows[-1]["status"] == "finished"
        assert_same_curve(rows, layout.read_metrics(alone), list(range(EVERY, 25, EVERY)), what=trial_dir.name)
        assert sorted(layout.read_checksums(trial_dir)) == [layout.CHECKPOINT]


@pytest.mark.slow
def test_a_multi_worker_trial_that_loses_a_worker_node_restarts_its_group_and_resumes(
        tmp_path: Path, monkeypatch) -> None:
    """Ray Train workers on nodes a and b; b is lost after the first checkpoint and a replacement
    node c joins (as an autoscaler replaces a spot node): the worker group restarts on a and c
    from the checkpoint in shared storage."""
    space = tmp_path / "node.yaml"
    space.write_text(SPACE.replace("lr: {values: [0.01, 0.02]}", "lr: {values: [0.01]}").replace(
        "workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2", "workers: 2, cpus_per_worker: 1, max_concurrent_trials: 1"))
    uri = f"file://{tmp_path}/store"
    store = Store(uri)
    cluster = LocalCluster(tmp_path, monkeypatch)
    killed_at: list[dict] = []
    try:
        cluster.add("a")
        cluster.add("b")
        study = _run_study(space, cluster, uri, tmp_path / "study.log")
        lost = _lose_a_node_when(study, store, tmp_path / "seen",  # a worker on each node
                                 lambda started: bool(started) and cluster.busy("a") and cluster.busy("b"),
                                 lambda: (cluster.lose("b"), cluster.add("c")))
        killed_at = _rows(lost[0]) if lost else []
        out = (tmp_path / "study.log").read_text()
        assert killed_at, "no moment with both workers past a checkpoint:\n" + out[-3000:]
        assert study.returncode == 0, out[-5000:]
        name = "scratch_2x_n16_lr0.01_s0"
        _assert_resumed_once(out, name, killed_at)

        import ray

        from study.tune.jobs import run_trial_on_ray

        ray.init(address=cluster.cluster.address)  # the same trial, uninterrupted, on nodes a and c
        try:
            run_trial_on_ray(load_study(space), Trial(init="scratch", schedule=2, base_lr=0.01, seed=0, size=Size(16)),
                             out_dir=tmp_path / "alone", data_root=tmp_path / "data", storage=tmp_path / "alone_ray")
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    # Ray Train's restart resumes every rank from the same checkpoint; gloo's sums are exact for
    # two ranks, so the curves agree to float rounding (1e-3, as for a killed worker process)
    trials = _copy_trials(store, tmp_path / "final")
    rows = layout.read_metrics(trials / name)
    assert rows[-1]["status"] == "finished"
    assert_same_curve(rows, layout.read_metrics(tmp_path / "alone"), list(range(EVERY, 25, EVERY)), tol=1e-3, what=name)
