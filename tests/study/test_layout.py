"""The run folder's helpers: atomic writes, the metric log, run.json."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from study import layout


def test_an_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = layout.atomic_write_text(tmp_path / "sub" / "f.txt", "old")
    assert target.read_text() == "old"

    def half(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        layout.atomic_write(target, half)
    assert target.read_text() == "old"


def test_the_metric_log_appends_rewrites_and_truncates(tmp_path: Path) -> None:
    assert layout.read_metrics(tmp_path) == []
    for it in (4, 8, 12):
        layout.append_metrics(tmp_path, {"iteration": it, "status": "running", "loss": 1.0 / it, "bbox_AP": math.nan})
    rows = layout.read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [4, 8, 12] and math.isnan(rows[0]["bbox_AP"])
    assert not layout.truncate_metrics(tmp_path, 12)  # nothing past the checkpoint
    assert layout.truncate_metrics(tmp_path, 8)
    assert [r["iteration"] for r in layout.read_metrics(tmp_path)] == [4, 8]
    assert layout.truncate_metrics(tmp_path, 0) and layout.read_metrics(tmp_path) == []
    assert not (tmp_path / (layout.METRICS + ".tmp")).exists()


def test_a_metric_row_has_one_constructor_and_a_closed_set_of_statuses(tmp_path: Path) -> None:
    row = layout.MetricRow(8, "finished", {"init": "scratch", "seed": 0}, lr=0.01, losses={"loss": 0.5},
                           metrics={"bbox_AP": 12.5}, images_per_s=3.0, seen={"images_seen": 32})
    assert row.as_dict() == {"iteration": 8, "status": "finished", "lr": 0.01, "init": "scratch", "seed": 0,
                             "loss": 0.5, "bbox_AP": 12.5, "images_per_s": 3.0, "images_seen": 32}
    assert layout.MetricRow(4, "paused", {"seed": 0}).as_dict() == {"iteration": 4, "status": "paused", "seed": 0}
    with pytest.raises(ValueError, match="status 'done' is not one of running, finished, diverged, training, paused"):
        layout.MetricRow(4, "done", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a 'training' row is not logged"):
        layout.append_metrics(tmp_path, layout.MetricRow(4, "training", {}).as_dict())
    assert layout.read_metrics(tmp_path) == []


def test_run_info_round_trips(tmp_path: Path) -> None:
    assert layout.read_run_info(tmp_path) is None
    info = layout.RunInfo(started="2026-12-01T10:00:00", finished="2026-12-01T10:07:00", seconds=420.5,
                          phases_s={"trials": 300.0}, machine={"cpus": 2})
    (tmp_path / layout.RUN_INFO).write_text(info.to_json())
    assert layout.read_run_info(tmp_path) == info
    assert layout.trial_path("default", "scratch_1x_n16_lr0.01_s0", layout.METRICS) == \
        "default/trials/scratch_1x_n16_lr0.01_s0/metrics.jsonl"


def test_a_checkpoint_check_says_intact_missing_or_why(tmp_path: Path) -> None:
    from study.layout import CheckpointCheck, check_checkpoint, file_record

    gone = check_checkpoint(tmp_path / "none.pt")
    assert gone == CheckpointCheck() and gone.missing and not gone.intact
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"x" * 100)
    unrecorded = check_checkpoint(ckpt)
    assert not unrecorded.missing and not unrecorded.intact and "no size or checksum" in unrecorded.problem
    assert check_checkpoint(ckpt, {"checkpoint.pt": file_record(ckpt, 12)}) == CheckpointCheck(iteration=12)
