"""A full disk while a trial writes its checkpoint, for real: the trial trains on a 250 MB tmpfs
(in a mount namespace of its own, `unshare`), which holds two checkpoints of the tiny detector
(94 MB each) but not the third one being written. The trial fails saying so, its checkpoints
before are intact, and once the tmpfs is made larger the same command continues and ends as an
uninterrupted run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study import layout
from study.config import StudyConfig, to_dict
from study.plan.trials import Trial
from study.train.loop import train_trial
from study.train.state import checkpoint_bytes
from tests.conftest import assert_same_curve

pytestmark = pytest.mark.slow  # trials on a tmpfs that fills up: the full suite, not the fast lane

SCRIPT = """
set -u
mount -t tmpfs -o size={small}m study-small {mnt}
{trial} > {out}/first.log 2>&1; echo $? > {out}/first.rc
cp -r {trial_dir} {out}/after_full
mount -o remount,size=1024m {mnt}  # space is back
{trial} > {out}/second.log 2>&1; echo $? > {out}/second.rc
cp -r {trial_dir} {out}/after_resume
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_full_disk_fails_the_trial_with_a_message_and_resume_continues(tmp_path: Path, tiny_cfg: StudyConfig,
                                                                         tiny_trial: Trial) -> None:
    trial = Trial(init="scratch", schedule=2, base_lr=tiny_trial.base_lr, seed=0, size=tiny_trial.size)
    per_checkpoint = checkpoint_bytes(tiny_cfg) / 2**20
    small = int(2.7 * per_checkpoint)  # checkpoint.prev.pt + checkpoint.pt fit, the third one being written not
    space = tmp_path / "disk.yaml"
    space.write_text(yaml.safe_dump({**to_dict(tiny_cfg), "name": "disk"}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    trial_dir = mnt / layout.trial_path("disk", trial.name())
    command = (f"{sys.executable} -m study.cli trial {space} --no-ray --storage {mnt} --set init=scratch "
               f"schedule=2 train_images=16 base_lr={trial.base_lr} seed=0")
    script = SCRIPT.format(small=small, mnt=mnt, trial=command, out=tmp_path, trial_dir=trial_dir)
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "bash", "-c", script],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr

    first = (tmp_path / "first.log").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first[-3000:]
    assert (f"study: [Errno 28] no space left on the device while writing {trial_dir / layout.CHECKPOINT} "
            "(iteration 12); the checkpoints before it are intact: free some space, then continue: `study run` "
            "with --resume, or `study trial` again (it resumes by itself)") in first, first[-3000:]
    assert "Traceback" not in first
    full = tmp_path / "after_full"
    assert layout.check_checkpoint(full / layout.CHECKPOINT).iteration == 8  # intact, as recorded
    assert layout.check_checkpoint(full / layout.PREVIOUS_CHECKPOINT).iteration == 4
    assert sorted(p.name for p in full.iterdir()) == sorted(
        [layout.CHECKPOINT, layout.PREVIOUS_CHECKPOINT, layout.CHECKSUMS, layout.METRICS])  # no partial file
    assert [r["iteration"] for r in layout.read_metrics(full)] == [4, 8, 12]  # row 12 came before its checkpoint

    second = (tmp_path / "second.log").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
    assert "resuming from the checkpoint of iteration 8" in second
    resumed = layout.read_metrics(tmp_path / "after_resume")
    train_trial(tiny_cfg, trial, out_dir=tmp_path / "uninterrupted", data_root=tmp_path / "data")
    want = layout.read_metrics(tmp_path / "uninterrupted")
    assert_same_curve(resumed, want, [4, 8, 12, 16])


STUDY_SCRIPT = """
set -u
mount -t tmpfs -o size={small}m study-small {mnt}
{study} > {out}/first.log 2>&1; echo $? > {out}/first.rc
cp -r {run}/trials {out}/after_full
mount -o remount,size=1024m {mnt}  # space is back
{study} --resume > {out}/second.log 2>&1; echo $? > {out}/second.rc
cp -r {run}/trials {out}/after_resume
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_study_whose_disk_fills_up_records_the_error_and_resume_continues(tmp_path: Path, tiny_cfg: StudyConfig,
                                                                            tiny_trial: Trial) -> None:
    """The same through `study run` (Tune, its retry, its own files on the full disk too), then
    `study run --resume` once there is space."""
    import os
    import tempfile

    trial = Trial(init="scratch", schedule=2, base_lr=tiny_trial.base_lr, seed=0, size=tiny_trial.size)
    small = int(2.7 * checkpoint_bytes(tiny_cfg) / 2**20)
    space = tmp_path / "disk.yaml"
    space.write_text(yaml.safe_dump({**to_dict(tiny_cfg), "name": "disk", "grid": {
        "init": ["scratch"], "schedule": [2], "train_images": [16], "seeds": [0]},
        "lr": {"values": [trial.base_lr]}, "resources": {"workers": 1, "cpus_per_worker": 1, "max_failures": 1}}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    study = f"{sys.executable} -m study.cli run {space} --storage {mnt}"
    script = STUDY_SCRIPT.format(small=small, mnt=mnt, study=study, out=tmp_path, run=mnt / "disk")
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "bash", "-c", script], env=env,
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.log").read_text()
    name = trial.name()
    assert f"no space left on the device while writing {mnt / 'disk' / 'trials' / name / layout.CHECKPOINT}" in first, \
        first[-4000:]
    full = tmp_path / "after_full" / name
    assert layout.check_checkpoint(full / layout.CHECKPOINT).iteration == 8  # intact: the retry failed the same way
    assert "no space left on the device" in (full / layout.FAILED).read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1"  # the study ran, but not all of it
    assert "1 trial(s) errored" in first and "with --resume retries them" in first

    second = (tmp_path / "second.log").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-4000:]
    assert f"{name}: resuming from the checkpoint of iteration 8" in second, second[-4000:]
    resumed = layout.read_metrics(tmp_path / "after_resume" / name)
    assert not (tmp_path / "after_resume" / name / layout.FAILED).exists()
    import torch

    torch.set_num_threads(1)  # as the trial (cpus_per_worker: 1)
    train_trial(tiny_cfg, trial, out_dir=tmp_path / "uninterrupted", data_root=tmp_path / "data")
    want = layout.read_metrics(tmp_path / "uninterrupted")
    assert_same_curve(resumed, want, [4, 8, 12, 16])
