"""One trial as a Ray Train job of two gloo workers, in one Ray instance: it trains what one
process does; a NaN on one rank ends it diverged on both; the ranks sample RoIs differently; a
killed worker's group resumes from the last checkpoint; SyncBN asks for one node."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from study.config import StudyConfig, study_from_dict, to_dict
from study.layout import read_metrics
from study.plan.trials import Trial


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for this module's jobs (starting one costs seconds), with its
    dashboard: the state API that finds a worker to kill goes through it."""
    import ray

    from study.tune.launch import start_ray

    start_ray(cpus=2)
    yield
    ray.shutdown()


def _two_workers(cfg: StudyConfig, **solver: Any) -> StudyConfig:
    return study_from_dict({**to_dict(cfg), "solver": {**to_dict(cfg.solver), **solver},
                            "resources": {"workers": 2, "max_failures": 1}})


@pytest.mark.slow
def test_a_trial_on_two_ray_train_workers(tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial,
                                          ray_instance: None) -> None:
    """2 CPU workers (gloo, DDP): trains, evaluates on shards gathered to rank 0, checkpoints."""
    from study.tune.jobs import run_trial_on_ray

    cfg = study_from_dict({**to_dict(tiny_cfg),
                           "resources": {"workers": 2}})
    result = run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path)
    rows = read_metrics(tmp_path / "t")
    assert [r["iteration"] for r in rows] == [4, 8] and rows[-1]["status"] == "finished"
    assert rows[-1]["images_seen"] == 8 * 4  # both ranks' images, counted once
    assert result.checkpoint is not None and result.metrics["iteration"] == 8
    assert math.isfinite(rows[-1]["loss"]) and 0.0 <= rows[-1]["bbox_AP50"] <= 100.0


@pytest.mark.slow
def test_a_nan_on_rank_1_only_ends_both_workers_diverged_at_that_iteration(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial, ray_instance: None) -> None:
    """Rank 1's images are NaN at iteration 6 (rank 0's are not): both ranks skip the step and
    stop, one 'diverged' row at 6, and the job ends within a minute (not at the process group's
    30-minute timeout, nor as an error)."""
    from study.train.loop import NanDrill
    from study.tune.jobs import run_trial_on_ray

    start = time.monotonic()
    result = run_trial_on_ray(_two_workers(tiny_cfg), tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path,
                              drill=NanDrill(iteration=6, rank=1))
    assert time.monotonic() - start < 60
    rows = read_metrics(tmp_path / "t")
    assert [(r["iteration"], r["status"]) for r in rows] == [(4, "running"), (6, "diverged")]
    assert math.isnan(rows[-1]["loss"]) and rows[-1]["images_seen"] == 6 * 4  # both ranks' images
    assert result.error is None


def roi_sampling_worker(config: dict[str, Any]) -> None:
    """Build the trial as a worker of the job does, run one forward pass on the same two images on
    every rank, and save which proposals the RoI sampler took, with a digest of the weights."""
    from study.config import study_from_dict
    from study.data.coco import collate
    from study.plan.trials import Trial
    from study.train import collectives
    from study.train.loop import build_setup

    setup = build_setup(study_from_dict(config["study"]), Trial.from_dict(config["trial"]),
                        data_root=config["data_root"], pretrained_weights=None, device=torch.device("cpu"))
    sampler, taken = setup.model.roi_heads.fg_bg_sampler, []

    def record(matched_idxs: list[torch.Tensor]) -> Any:
        pos, neg = sampler(matched_idxs)
        taken.append([torch.nonzero(p | n).flatten().tolist() for p, n in zip(pos, neg)])
        return pos, neg

    setup.model.roi_heads.fg_bg_sampler = record
    images, targets = collate([setup.train[(0, False)], setup.train[(1, False)]])
    setup.model.train()
    setup.model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
    digest = float(sum(p.double().sum() for p in setup.model.parameters()))
    torch.save({"taken": taken, "weights": digest}, Path(config["out"]) / f"rank{collectives.rank()}.pt")


@pytest.mark.slow
def test_the_two_ranks_draw_different_roi_samples_in_the_same_step(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial, ray_instance: None) -> None:
    """The same images on both ranks, the same weights (the init is the seed's): the RoI sampler
    takes other proposals on rank 1 than on rank 0; rank 0 takes what a one-process run takes."""
    from study.tune.launch import fit_torch

    config = {"study": to_dict(tiny_cfg), "trial": tiny_trial.to_dict(), "data_root": str(tmp_path),
              "out": str(tmp_path)}
    (tmp_path / "alone").mkdir()
    roi_sampling_worker({**config, "out": str(tmp_path / "alone")})  # one process, no process group
    fit_torch(roi_sampling_worker, config, name="roi", storage_path=str(tmp_path / "ray"), workers=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone = torch.load(tmp_path / "alone" / "rank0.pt", weights_only=True)
    assert ranks[0]["weights"] == ranks[1]["weights"] == alone["weights"]
    assert ranks[0]["taken"] != ranks[1]["taken"] and ranks[0]["taken"] == alone["taken"]
    assert len(ranks[0]["taken"][0][0]) > 0


@pytest.mark.slow
def test_a_killed_ray_train_worker_resumes_from_the_checkpoint(tmp_path: Path,
                                                               tiny_cfg: StudyConfig,
                                                               tiny_trial: Trial, ray_instance: None) -> None:
    """SIGKILL rank 1 after the first checkpoint: Ray Train restarts the worker group, every rank
    resumes from the checkpoint with its own sampling stream, and the run ends as an
    uninterrupted one does: the same rows and the same weights."""
    import os
    import signal
    import threading
    import time

    import ray
    from ray.util.state import list_actors

    from study.tune.jobs import run_trial_on_ray

    cfg = _two_workers(tiny_cfg, unit_iters=12, drops_before_end=[6, 3])
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

    whole = run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "whole", data_root=tmp_path,
                             storage=tmp_path / "ray_whole")
    killer = threading.Thread(target=kill_rank_1_after_the_first_checkpoint, daemon=True)
    killer.start()
    run_trial_on_ray(cfg, tiny_trial, out_dir=tmp_path / "killed", data_root=tmp_path,
                     storage=tmp_path / "ray_killed")
    killer.join(timeout=10)
    assert killed, "no worker was killed"
    rows, want = read_metrics(tmp_path / "killed"), read_metrics(tmp_path / "whole")
    assert whole.metrics["iteration"] == 12
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in want] == [4, 8, 12]
    assert rows[-1]["status"] == "finished" and rows[-1]["images_seen"] == want[-1]["images_seen"]
    for key in ("loss", "loss_classifier", "bbox_AP", "segm_AP"):
        assert rows[-1][key] == pytest.approx(want[-1][key], abs=1e-3), key
    a, b = (torch.load(tmp_path / p / "checkpoint.pt", weights_only=True)["model"] for p in ("killed", "whole"))
    assert sorted(a) == sorted(b)
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-5


def test_a_multi_worker_syncbn_trial_asks_ray_for_one_node(monkeypatch: pytest.MonkeyPatch,
                                                          tiny_cfg: StudyConfig, tiny_trial: Trial,
                                                          tmp_path: Path) -> None:
    """norm syncbn on several workers: STRICT_PACK (its statistics all-reduce every forward pass);
    GN: PACK; resources.placement overrides either."""
    from study.tune import jobs

    def cfg(norm: str, workers: int, placement: str = "auto") -> StudyConfig:
        return study_from_dict({**to_dict(tiny_cfg), "model": {**to_dict(tiny_cfg.model), "norm": norm},
                                "pretrain": {**to_dict(tiny_cfg.pretrain), "norm": None},  # the detector's
                                "resources": {"workers": workers, "gpus_per_worker": 1, "placement": placement}})

    asked: list[str] = []
    monkeypatch.setattr(jobs, "start_ray", lambda **_kw: None)
    monkeypatch.setattr(jobs, "fit_torch", lambda *_a, **kw: asked.append(kw["placement_strategy"]))
    for c in (cfg("syncbn", 8), cfg("gn", 8), cfg("syncbn", 1), cfg("syncbn", 8, "SPREAD")):
        jobs.run_trial_on_ray(c, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path)
    assert asked == ["STRICT_PACK", "PACK", "PACK", "SPREAD"]
