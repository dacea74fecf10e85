"""The trial loop: in one process (world_size 1), and as a Ray Train job of one and two workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
import torch

from study.cli import main
from study.config import StudyConfig, study_from_dict, to_dict
from study.layout import read_metrics
from study.plan.trials import Size, Trial
from study.train.loop import train_trial
from tests.conftest import assert_same_curve

def test_a_trial_trains_evaluates_checkpoints_and_logs(tmp_path: Path, tiny_cfg: StudyConfig,
                                                       tiny_trial: Trial) -> None:
    reported: list[tuple[dict, Path | None]] = []
    last = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path,
                       report=lambda row, ckpt: reported.append((row, ckpt)))
    rows = read_metrics(tmp_path / "t")
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe
    assert [r["iteration"] for r in rows] == [4, 8] and same(rows[-1], last)
    assert [r["status"] for r in rows] == ["running", "finished"]
    assert same([row for row, _ in reported], rows) and all(c is not None for _, c in reported)
    assert last["images_seen"] == 8 * 4 and last["pixels_seen"] > 0 and last["instances_seen"] >= 32
    assert last["pretrain_images_seen"] == 0 and last["train_images"] == 16
    for key in ("loss", "loss_mask", "bbox_AP", "bbox_AP50", "segm_AP", "segm_APl", "images_per_s"):
        assert key in last
    assert rows[0]["lr"] == pytest.approx(0.01) and last["lr"] == pytest.approx(0.0001)
    state = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 8 and len(state["rng"]) == 1


def test_a_resumed_trial_equals_an_uninterrupted_one(tmp_path: Path, tiny_cfg: StudyConfig,
                                                     tiny_trial: Trial) -> None:
    full = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "full", data_root=tmp_path)
    first = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "resumed", data_root=tmp_path, stop_at=4)
    assert first["iteration"] == 4
    resumed = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "resumed", data_root=tmp_path)
    assert resumed["iteration"] == 8 and resumed["images_seen"] == full["images_seen"]
    for key in ("loss", "loss_classifier", "loss_mask", "bbox_AP", "segm_AP"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-4), key
    assert [r["iteration"] for r in read_metrics(tmp_path / "resumed")] == [4, 8]


@pytest.mark.slow
def test_a_paused_trial_continues_as_an_uninterrupted_one_without_an_extra_row(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    """A halving trunk's segment pauses at a fork point that is no evaluation: it checkpoints
    there, reports a 'paused' row that it does not log, and the next call continues exactly."""
    full = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "full", data_root=tmp_path)
    out, reported = tmp_path / "paused", []
    paused = train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path, pause_at=6,
                         report=lambda row, ckpt: reported.append((row["status"], row["iteration"], ckpt)))
    assert paused["status"] == "paused" and paused["iteration"] == 6
    assert paused["bbox_AP"] == read_metrics(out)[-1]["bbox_AP"]  # the last evaluation's (iteration 4)
    assert [(s, i) for s, i, _ in reported] == [("running", 4), ("paused", 6)] and reported[-1][2] is not None
    assert [r["iteration"] for r in read_metrics(out)] == [4]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 6
    resumed = train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path)
    assert [r["iteration"] for r in read_metrics(out)] == [4, 8]
    for key in ("loss", "loss_classifier", "bbox_AP", "segm_AP"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-4), key


@pytest.mark.slow
def test_a_crash_between_the_log_row_and_the_checkpoint_repeats_no_row(tmp_path: Path,
                                                                       tiny_cfg: StudyConfig,
                                                                       tiny_trial: Trial) -> None:
    """An evaluation appends its row, then writes the checkpoint. Killed in between, the log is one
    row ahead of the checkpoint: the resume drops that row and logs it again, once."""
    import shutil

    full = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "full", data_root=tmp_path)
    out = tmp_path / "crashed"
    train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path, stop_at=4)
    shutil.copy(out / "checkpoint.pt", tmp_path / "at4.pt")
    shutil.copy(out / "checksums.json", tmp_path / "at4.json")
    train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path)  # logs row 8, then checkpoints 8
    shutil.copy(tmp_path / "at4.pt", out / "checkpoint.pt")  # as if killed before checkpoint 8
    shutil.copy(tmp_path / "at4.json", out / "checksums.json")
    synced: list[str] = []
    resumed = train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path, sync=lambda p: synced.append(p.name))
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [4, 8]
    assert rows[-1]["loss"] == pytest.approx(full["loss"], abs=1e-4) and resumed["iteration"] == 8
    # every file it rewrote, wrote or removed was handed to `sync` (pushed to shared storage): the
    # log, the new row, checkpoint 4 kept as the fallback, checkpoint 8 and its record; then, the
    # trial finished, the fallback removed
    assert synced == ["metrics.jsonl", "metrics.jsonl", "checkpoint.prev.pt", "checkpoint.pt",
                      "checksums.json", "checkpoint.prev.pt", "checksums.json"]
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".yaml") == ["checkpoint.pt", "checksums.json",
                                                                             "metrics.jsonl"]


def test_divergence_is_reported_not_raised(tmp_path: Path, tiny_cfg: StudyConfig) -> None:
    wild = Trial(init="scratch", schedule=1, base_lr=1e6, seed=0, size=Size(16))
    row = train_trial(tiny_cfg, wild, out_dir=tmp_path / "d", data_root=tmp_path)
    assert row["status"] == "diverged" and 1 <= row["iteration"] <= 8
    assert math.isnan(row["loss"]) and read_metrics(tmp_path / "d")[-1]["status"] == "diverged"


def test_study_trial_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_cfg: StudyConfig) -> None:
    space = tmp_path / "smoke.yaml"
    space.write_text(yaml.safe_dump({**to_dict(tiny_cfg), "name": "cli", "grid": {"schedule": [1],
                                                                              "train_images": [16]}}))
    args = ["trial", str(space), "--set", "seed=1", "base_lr=0.005", "--no-ray", "--storage", str(tmp_path / "runs")]
    assert main(args) == 0
    out = capsys.readouterr().out
    trial_dir = tmp_path / "runs" / "cli" / "trials" / "scratch_1x_n16_lr0.005_s1"
    assert f"-> {trial_dir}" in out and "finished at iteration 8" in out
    assert main(args) == 0 and "finished at iteration 8" in capsys.readouterr().out  # already done
    assert main(["trial", str(space), "--set", "lr=0.1", "--no-ray"]) == 2
    assert "--set: 'lr=0.1': expected KEY=VALUE with KEY one of init, schedule" in capsys.readouterr().err
    assert main(["trial", str(space), "--set", "schedule=0.2", "--no-ray"]) == 2
    assert "0.2x ends at iteration 2" in capsys.readouterr().err


def test_a_trial_on_the_real_fruits_set(fruits: Path, tmp_path: Path, tiny_cfg: StudyConfig) -> None:
    """fruits_nuts split deterministically into train/val (in a temp folder), one short trial."""
    from study.data.coco import split_coco

    train_json, val_json = split_coco(fruits / "annotations.json", tmp_path / "split", val_fraction=0.25)
    again = split_coco(fruits / "annotations.json", tmp_path / "split2", val_fraction=0.25)
    assert train_json.read_text() == again[0].read_text() and val_json.read_text() == again[1].read_text()
    n_train = len(json.loads(train_json.read_text())["images"])
    n_val = len(json.loads(val_json.read_text())["images"])
    assert (n_train, n_val) == (14, 4)  # round(18 x 0.25) = 4 held out
    assert main(["data", "split", str(fruits / "annotations.json"), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "val.json").read_text() == val_json.read_text()
    cfg = study_from_dict({
        **to_dict(tiny_cfg), "name": "fruits",
        "data": {"source": "coco", "train": {"annotations": str(train_json), "images": str(fruits / "images")},
                 "val": {"annotations": str(val_json), "images": str(fruits / "images")}},
        "model": {**to_dict(tiny_cfg.model), "min_size": 96, "max_size": 128}})
    row = train_trial(cfg, Trial(init="scratch", schedule=1, base_lr=0.01, seed=0),
                      out_dir=tmp_path / "t", data_root=tmp_path)
    rows = read_metrics(tmp_path / "t")
    assert [r["iteration"] for r in rows] == [4, 8] and row["status"] == "finished"
    for key in ("iteration", "lr", "loss", "bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50",
                "segm_AP75", "images_seen", "instances_seen", "pixels_seen", "images_per_s"):
        assert key in row, key
    assert row["images_seen"] == 32 and row["pixels_seen"] == 32 * 96 * 128



def test_a_trial_trains_on_a_set_with_degenerate_boxes(degenerate_fruits: tuple[Path, list[int]], fruits: Path,
                                                     tmp_path: Path, tiny_cfg: StudyConfig) -> None:
    """Zero-height and zero-area boxes in the training and val splits: the pre-flight's loader
    accepts them, and a trial finishes with finite losses and evaluates."""
    from study.data.coco import split_coco

    ann_path, ids = degenerate_fruits
    train_json, val_json = split_coco(ann_path, tmp_path / "split", val_fraction=0.25)
    train_ids = {a["id"] for a in json.loads(train_json.read_text())["annotations"]}
    cfg = study_from_dict({
        **to_dict(tiny_cfg), "name": "degenerate",
        "data": {"source": "coco", "train": {"annotations": str(train_json), "images": str(fruits / "images")},
                 "val": {"annotations": str(val_json), "images": str(fruits / "images")}},
        "model": {**to_dict(tiny_cfg.model), "min_size": 96, "max_size": 128}})
    row = train_trial(cfg, Trial(init="scratch", schedule=1, base_lr=0.01, seed=0), out_dir=tmp_path / "t",
                      data_root=tmp_path)
    assert row["status"] == "finished" and math.isfinite(row["loss"]) and row["bbox_AP"] >= 0
    assert len(train_ids & set(ids)) >= 1  # some of the degenerate boxes are in the training split


def test_evaluating_does_not_change_the_training(tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    """Evaluations every 2 iterations or only at the end: the same weights and the same final AP
    (prediction draws nothing from the RNG that RPN/RoI sampling uses)."""
    from models.weight_files import load_state_file

    for period in (2, 8):
        cfg = study_from_dict({**to_dict(tiny_cfg), "solver": {**to_dict(tiny_cfg.solver), "eval_period": period}})
        train_trial(cfg, tiny_trial, out_dir=tmp_path / str(period), data_root=tmp_path)
    assert [r["iteration"] for r in read_metrics(tmp_path / "2")] == [2, 4, 6, 8]
    often, rarely = read_metrics(tmp_path / "2")[-1], read_metrics(tmp_path / "8")[-1]
    assert (often["bbox_AP"], often["segm_AP"]) == (rarely["bbox_AP"], rarely["segm_AP"])
    a, b = (load_state_file(tmp_path / p / "checkpoint.pt")["model"] for p in ("2", "8"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_solver_precision_chooses_the_trials_autocast(tmp_path: Path, tiny_cfg: StudyConfig,
                                                      tiny_trial: Trial) -> None:
    """bf16 and fp32 train differently; auto trains as the one this machine's probe picks."""
    from study.train.precision import use_bf16

    loss = {}
    for precision in ("fp32", "bf16", "auto"):
        cfg = study_from_dict({**to_dict(tiny_cfg), "solver": {**to_dict(tiny_cfg.solver), "precision": precision}})
        loss[precision] = train_trial(cfg, tiny_trial, out_dir=tmp_path / precision, data_root=tmp_path,
                                      stop_at=2)["loss"]
    assert loss["fp32"] != loss["bf16"] and loss["fp32"] == pytest.approx(loss["bf16"], rel=0.05)
    assert loss["auto"] == loss["bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"]


def test_the_trials_sgd_is_fused_and_steps_as_torchs_default_sgd() -> None:
    """build_sgd: one fused kernel, the same update as torch's default (for-loop) SGD, with momentum
    and no weight decay on norm parameters, over several steps."""
    from models.norms import parameter_groups
    from study.train.build import build_sgd

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.Flatten(),
                                   torch.nn.Linear(8 * 6 * 6, 2))

    fused_model, plain_model = model(), model()
    fused = build_sgd(fused_model, lr=0.01, momentum=0.9, weight_decay=1e-2, weight_decay_norm=0.0)
    plain = torch.optim.SGD(parameter_groups(plain_model, weight_decay=1e-2, weight_decay_norm=0.0),
                            lr=0.01, momentum=0.9)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [1e-2, 0.0]
    x = torch.randn(4, 3, 8, 8)
    for _ in range(5):
        for m, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same update, to float rounding
    assert not torch.equal(fused_model[0].weight, model()[0].weight)  # it did train


def _with_solver(cfg: StudyConfig, **solver: object) -> StudyConfig:
    return study_from_dict({**to_dict(cfg), "solver": {**to_dict(cfg.solver), **solver}})


class Killed(Exception):
    """Stands in for the process dying right after a report (its files are all written)."""


@pytest.mark.slow
def test_a_trial_killed_between_two_evaluations_resumes_from_its_last_checkpoint(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial, capsys: pytest.CaptureFixture[str]) -> None:
    """checkpoint_period 3, evaluations every 4: a trial killed after iteration 6's checkpoint
    resumes at 6, not at the evaluation of 4, and ends as an uninterrupted one does."""
    cfg = _with_solver(tiny_cfg, checkpoint_period=3)
    full = train_trial(cfg, tiny_trial, out_dir=tmp_path / "full", data_root=tmp_path)
    out = tmp_path / "killed"

    def die_after_6(row: dict, saved: Path | None) -> None:
        if row["iteration"] == 6:
            assert saved is not None and torch.load(saved, weights_only=True)["iteration"] == 6
            raise Killed

    with pytest.raises(Killed):
        train_trial(cfg, tiny_trial, out_dir=out, data_root=tmp_path, report=die_after_6)
    assert [r["iteration"] for r in read_metrics(out)] == [4]  # the last evaluation before the kill
    capsys.readouterr()
    resumed = train_trial(cfg, tiny_trial, out_dir=out, data_root=tmp_path)
    assert "resuming from the checkpoint of iteration 6" in capsys.readouterr().out
    assert_same_curve(read_metrics(out), read_metrics(tmp_path / "full"), [4, 8])
    assert resumed["images_seen"] == full["images_seen"] == 8 * 4
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True)["model"] for p in (out, tmp_path / "full"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_progress_rows_reach_report_every_log_period_and_never_the_metric_log(
        tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    """log_period 3: progress rows at 3 and 6 (not evaluations: AP NaN, losses since the last
    row, throughput); a checkpoint between evaluations (5) reports one too; the metric log and
    the analysis hold the evaluations only."""
    from study.analysis.results import load_results

    cfg = _with_solver(tiny_cfg, log_period=3, checkpoint_period=5)
    reported: list[tuple[dict, bool]] = []
    out = tmp_path / "run" / "trials" / tiny_trial.name()
    train_trial(cfg, tiny_trial, out_dir=out, data_root=tmp_path,
                report=lambda row, saved: reported.append((row, saved is not None)))
    assert [(r["iteration"], r["status"], saved) for r, saved in reported] == [
        (3, "training", False), (4, "running", True), (5, "training", True), (6, "training", False),
        (8, "finished", True)]
    progress = [r for r, _ in reported if r["status"] == "training"]
    for row in progress:
        assert math.isnan(row["bbox_AP"]) and math.isnan(row["segm_AP"])
        assert math.isfinite(row["loss"]) and row["images_per_s"] > 0 and row["lr"] > 0
        assert row["images_seen"] == row["iteration"] * 4 and row["train_images"] == 16
    assert [r["iteration"] for r in read_metrics(out)] == [4, 8]
    df = load_results(tmp_path / "run")
    assert df["iteration"].tolist() == [4, 8] and set(df["status"]) == {"running", "finished"}


def test_a_nan_drill_ends_the_trial_diverged_at_its_iteration(tmp_path: Path, tiny_cfg: StudyConfig,
                                                              tiny_trial: Trial) -> None:
    from study.train.loop import NanDrill

    reported: list[dict] = []
    row = train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path, drill=NanDrill(iteration=6),
                      report=lambda r, _c: reported.append(r))
    assert row["status"] == "diverged" and row["iteration"] == 6 and math.isnan(row["loss"])
    assert [(r["iteration"], r["status"]) for r in read_metrics(tmp_path / "t")] == [(4, "running"), (6, "diverged")]
    assert reported[-1]["status"] == "diverged" and row["images_seen"] == 6 * 4


def test_the_init_is_the_seeds_and_the_sampling_stream_the_seeds_and_ranks(tmp_path: Path, tiny_cfg: StudyConfig,
                                                                           tiny_trial: Trial) -> None:
    """Two builds of a trial: the same weights and the same sampling stream; each rank's stream
    its own, fixed by (seed, rank)."""
    from study.train.loop import build_setup, sampling_seed

    draws, weights = [], []
    for _ in range(2):
        setup = build_setup(tiny_cfg, tiny_trial, data_root=tmp_path, pretrained_weights=None,
                            device=torch.device("cpu"))
        draws.append(torch.rand(4))
        weights.append(next(iter(setup.model.parameters())).detach().clone())
    assert torch.equal(draws[0], draws[1]) and torch.equal(weights[0], weights[1])
    seeds = {sampling_seed(s, r) for s in (0, 1) for r in range(8)}
    assert len(seeds) == 16 and sampling_seed(0, 0) == sampling_seed(0, 0)
    torch.manual_seed(sampling_seed(tiny_trial.seed, 1))
    assert not torch.equal(torch.rand(4), draws[0])  # rank 1 draws other samples than rank 0
