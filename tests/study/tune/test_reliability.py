"""Crashes and mistakes during a study, for real: a trial's process killed with SIGKILL (Tune
retries it, it resumes); `study run` killed with SIGKILL (driver, Ray and trials together, as
when a machine dies) and resumed with --resume; a second `study run` on the same folder while the
first runs; trials that diverge inside a study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from study.cli import main
from study.analysis.results import final_rows, load_results

# Trials run one at a time, so the order is fixed: the two 4x trunks (each with its own
# Optuna-proposed LR), then the two 1x branches, which leave their trunk at iteration 6.
CRASH_SPACE = """\
name: crash
data: {source: synthetic, synthetic: {train_images: 24, val_images: 8, image_size: 64}}
model: {backbone: resnet18, norm: gn, profile: tiny, min_size: 64, max_size: 64}
solver: {base_lr: 0.01, ims_per_batch: 2, unit_iters: 12, drops_before_end: [6, 2], warmup_iters: 1, eval_period: 3}
grid: {init: [scratch], schedule: [1, 4], train_images: [16], seeds: [0]}
lr: {low: 0.005, high: 0.02, samples: 2, seed: 0}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
"""


def _study(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the study
        return subprocess.Popen([sys.executable, "-m", "study.cli", *args], env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def _trial_processes(session: int) -> list[int]:
    """PIDs of the Ray workers running a Tune function trial in this process session."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [int(pid) for pid, sid, *cmd in (line.split(None, 2) for line in ps.splitlines())
            if int(sid) == session and cmd and cmd[0].startswith("ray::ImplicitFunc")]


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_a_killed_study_resumes_without_repeating_or_losing_work(tmp_path: Path, capsys) -> None:
    space = tmp_path / "crash.yaml"
    space.write_text(CRASH_SPACE)
    runs = tmp_path / "runs"
    trials = runs / "crash" / "trials"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"), "PYTHONUNBUFFERED": "1"}
    args = ["run", str(space), "--storage", str(runs)]

    first = _study(args, env, tmp_path / "first.log")
    killed_at: dict[str, list[dict]] = {}
    trial_killed: tuple[str, int] | None = None
    try:
        deadline = time.time() + 300
        refused = False
        while time.time() < deadline and first.poll() is None:
            done = [d for d in (trials.iterdir() if trials.is_dir() else [])
                    if _rows(d) and _rows(d)[-1]["status"] == "finished"]
            running = [d for d in (trials.iterdir() if trials.is_dir() else [])
                       if d not in done and len(_rows(d)) >= 2]
            if not refused and running:  # the run is under way: a second one must be refused
                assert main([*args, "--resume"]) == 2
                err = capsys.readouterr().err
                assert "is being written by another `study run`" in err and f'"pid": {first.pid}' in err, err
                refused = True
            if trial_killed is None and running and not done:  # first: kill the trial's own process
                pids = _trial_processes(first.pid)
                if len(pids) == 1:
                    os.kill(pids[0], signal.SIGKILL)
                    trial_killed = (running[0].name, _rows(running[0])[-1]["iteration"])
            if done and running and trial_killed:  # then: one trunk finished, the other under way
                os.killpg(first.pid, signal.SIGKILL)
                killed_at = {d.name: _rows(d) for d in trials.iterdir()}
                break
            time.sleep(0.05)
        assert killed_at, "no moment with a finished and a running trial:\n" + (tmp_path / "first.log").read_text()[-3000:]
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(first.pid)], check=False)  # Ray's processes too
        first.wait()
    # a dead trial process: Tune retried the trial (resources.max_failures: 1), which resumed from
    # its checkpoint (the kill may fall just after a row and before its checkpoint)
    name, at = trial_killed
    log = (tmp_path / "first.log").read_text()
    assert (f"{name}: resuming from the checkpoint of iteration {at}" in log
            or f"{name}: resuming from the checkpoint of iteration {at - 3}" in log), log[-4000:]
    finished = [n for n, rows in killed_at.items() if rows and rows[-1]["status"] == "finished"]
    interrupted = [n for n, rows in killed_at.items() if rows and rows[-1]["status"] == "running"]
    assert len(finished) == 1 and len(interrupted) == 1 and "_4x_" in interrupted[0]
    before = {n: (trials / n / "metrics.jsonl").read_bytes() for n in finished}
    stamp = {n: (trials / n / "checkpoint.pt").stat().st_mtime_ns for n in finished}

    assert main(args) == 2  # without --resume the folder is not reused
    assert "add --resume to continue it" in capsys.readouterr().err
    second = _study([*args, "--resume"], env, tmp_path / "second.log")
    try:
        second.wait(timeout=600)
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(second.pid)], check=False)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out[-4000:]

    # the interrupted trunk resumed from its last checkpoint (its last logged row, or the one
    # before if the kill fell between the row and the checkpoint), not from iteration 0
    last = killed_at[interrupted[0]][-1]["iteration"]
    assert (f"{interrupted[0]}: resuming from the checkpoint of iteration {last}" in out
            or f"{interrupted[0]}: resuming from the checkpoint of iteration {last - 3}" in out), out[-4000:]
    for name in finished:  # not trained again, not rewritten
        assert f"{name}: resuming" not in out
        assert (trials / name / "metrics.jsonl").read_bytes() == before[name]
        assert (trials / name / "checkpoint.pt").stat().st_mtime_ns == stamp[name]
    # the searcher went on from its saved state: the same LRs, no extra trials
    names = sorted(p.name for p in trials.iterdir())
    assert len(names) == 4 and {n.split("_lr")[1] for n in names} == {n.split("_lr")[1] for n in killed_at}
    df = load_results(runs / "crash")
    for name, group in df.groupby("trial"):  # complete histories: every evaluation once
        length = 12 * (4 if "_4x_" in name else 1)
        assert group["iteration"].tolist() == list(range(3, length + 1, 3)), name
        assert group["status"].tolist()[-1] == "finished"
    # the LR search's Optuna studies are in the run folder and were continued, not restarted:
    # each lineage's draw is one trial, with the final AP of its trunk as its value
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(runs / "crash" / "optuna.journal")))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["scratch_n16_s0"]
    study = optuna.load_study(study_name="scratch_n16_s0", storage=storage)
    finals = final_rows(df)
    trunks = finals[finals["schedule"] == 4].sort_values("base_lr")
    told = sorted((t.params["lr"], t.value, t.state.name) for t in study.trials)
    assert [(lr, state) for lr, _, state in told] == [(lr, "COMPLETE") for lr in trunks["base_lr"]]
    assert [v for _, v, _ in told] == pytest.approx(trunks["bbox_AP"].tolist())


@pytest.mark.slow
def test_diverging_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, capsys) -> None:
    import ray

    from study.analysis.report import summary
    from study.analysis.tables import problems

    space = tmp_path / "div.yaml"
    space.write_text(CRASH_SPACE.replace("name: crash", "name: div").replace(
        "lr: {low: 0.005, high: 0.02, samples: 2, seed: 0}", "lr: {values: [0.01, 100000.0]}").replace(
        "schedule: [1, 4]", "schedule: [1, 2]").replace("max_concurrent_trials: 1", "max_concurrent_trials: 2"))
    try:
        assert main(["run", str(space), "--storage", str(tmp_path / "runs")]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    df = load_results(tmp_path / "runs" / "div")
    last = df.sort_values("iteration").groupby("trial").tail(1).set_index("trial")
    wild = last[last["base_lr"] == 1e5]
    assert len(wild) == 2 and (wild["status"] == "diverged").all()
    trunk = wild[wild["schedule"] == 2].iloc[0]
    assert 1 <= trunk["iteration"] <= 6  # where it diverged
    tame = last[last["base_lr"] == 0.01]
    assert len(tame) == 2 and (tame["status"] == "finished").all()  # the study went on
    listed = problems(df)
    assert sorted(listed["status"]) == ["diverged", "diverged"]
    text = summary(df)
    assert "diverged" in text and "diverged" in printed
