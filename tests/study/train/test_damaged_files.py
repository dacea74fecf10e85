"""Damaged files at resume, for real: a truncated checkpoint, one with wrong bytes, both of a
trial's checkpoints damaged, a torn last metric row. Each is detected before use, named, and the
trial ends exactly as an uninterrupted one (every evaluation row once, the same final metrics)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from study import layout
from study.config import StudyConfig
from study.plan.trials import Trial
from study.train.loop import TIMING_COLUMNS, train_trial
from tests.conftest import assert_same_curve

pytestmark = pytest.mark.slow  # trials trained, damaged and resumed: the full suite, not the fast lane


@pytest.fixture(scope="module")
def trunk(tiny_trial: Trial) -> Trial:
    return dataclasses.replace(tiny_trial, schedule=2)  # 16 iterations, evaluations at 4, 8, 12, 16


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: StudyConfig, trunk: Trial) -> list[dict]:
    out = tmp_path_factory.mktemp("full")
    train_trial(tiny_cfg, trunk, out_dir=out, data_root=out)
    return layout.read_metrics(out)


def _stopped_at_8(tmp_path: Path, cfg: StudyConfig, trial: Trial) -> Path:
    """A trial stopped after its evaluation at 8: checkpoint.pt (8) and checkpoint.prev.pt (4)."""
    out = tmp_path / "trial"
    train_trial(cfg, trial, out_dir=out, data_root=tmp_path, stop_at=8)
    assert layout.check_checkpoint(out / layout.CHECKPOINT).iteration == 8
    assert layout.check_checkpoint(out / layout.PREVIOUS_CHECKPOINT).iteration == 4
    return out


def _assert_as_uninterrupted(out: Path, uninterrupted: list[dict]) -> None:
    rows = layout.read_metrics(out)
    assert_same_curve(rows, uninterrupted, [4, 8, 12, 16])
    assert set(rows[-1]) - TIMING_COLUMNS == set(uninterrupted[-1]) - TIMING_COLUMNS
    # finished: the fallback is gone, and what is left is what checksums.json records
    assert not (out / layout.PREVIOUS_CHECKPOINT).exists()
    assert layout.check_checkpoint(out / layout.CHECKPOINT).iteration == 16
    assert sorted(layout.read_checksums(out)) == [layout.CHECKPOINT]


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(
        tmp_path: Path, tiny_cfg: StudyConfig, trunk: Trial, uninterrupted: list[dict], capsys) -> None:
    out = _stopped_at_8(tmp_path, tiny_cfg, trunk)
    ckpt = out / layout.CHECKPOINT
    size = ckpt.stat().st_size
    ckpt.write_bytes(ckpt.read_bytes()[: size // 2])  # an upload cut half-way
    assert layout.check_checkpoint(ckpt).problem == f"truncated or padded: {size // 2:,} bytes, {size:,} when written"
    train_trial(tiny_cfg, trunk, out_dir=out, data_root=tmp_path)
    printed = capsys.readouterr().out
    assert f"checkpoint {ckpt} is not used: truncated or padded" in printed
    assert f"falling back to the previous checkpoint, {out / layout.PREVIOUS_CHECKPOINT} (iteration 4)" in printed
    assert "resuming from the checkpoint of iteration 4" in printed
    _assert_as_uninterrupted(out, uninterrupted)


def test_a_checkpoint_with_wrong_bytes_is_found_by_its_checksum(
        tmp_path: Path, tiny_cfg: StudyConfig, trunk: Trial, uninterrupted: list[dict], capsys) -> None:
    out = _stopped_at_8(tmp_path, tiny_cfg, trunk)
    ckpt = out / layout.CHECKPOINT
    data = bytearray(ckpt.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = bytes(64)  # same size, other bytes: only the SHA-256 tells
    ckpt.write_bytes(bytes(data))
    train_trial(tiny_cfg, trunk, out_dir=out, data_root=tmp_path)
    assert f"checkpoint {ckpt} is not used: its bytes differ from those written (SHA-256 mismatch)" \
        in capsys.readouterr().out
    _assert_as_uninterrupted(out, uninterrupted)


def test_with_both_checkpoints_damaged_the_trial_starts_again_cleanly(
        tmp_path: Path, tiny_cfg: StudyConfig, trunk: Trial, uninterrupted: list[dict], capsys) -> None:
    out = _stopped_at_8(tmp_path, tiny_cfg, trunk)
    for name in (layout.CHECKPOINT, layout.PREVIOUS_CHECKPOINT):
        (out / name).write_bytes(b"not a checkpoint")
    train_trial(tiny_cfg, trunk, out_dir=out, data_root=tmp_path)  # no crash, no crash loop
    printed = capsys.readouterr().out
    assert f"no usable checkpoint in {out}: the trial starts again from iteration 0" in printed
    _assert_as_uninterrupted(out, uninterrupted)


def test_a_checkpoint_without_a_record_is_not_trusted(tmp_path: Path, tiny_cfg: StudyConfig,
                                                      trunk: Trial) -> None:
    out = _stopped_at_8(tmp_path, tiny_cfg, trunk)
    records = layout.read_checksums(out)
    del records[layout.CHECKPOINT]  # as if the process died between the checkpoint and its record
    (out / layout.CHECKSUMS).write_text(json.dumps(records))
    assert "no size or checksum was recorded" in layout.check_checkpoint(out / layout.CHECKPOINT).problem
    # the previous checkpoint, renamed from checkpoint.pt, still matches its record
    assert layout.check_checkpoint(out / layout.PREVIOUS_CHECKPOINT).iteration == 4


def test_a_torn_last_metric_row_is_dropped_and_logged_again(
        tmp_path: Path, tiny_cfg: StudyConfig, trunk: Trial, uninterrupted: list[dict], capsys) -> None:
    out = _stopped_at_8(tmp_path, tiny_cfg, trunk)
    log = out / layout.METRICS
    whole = log.read_text()
    row12 = json.dumps(uninterrupted[2])
    log.write_text(whole + row12[: len(row12) // 2])  # a row cut short as the process died
    assert [r["iteration"] for r in layout.read_metrics(out)] == [4, 8]  # the torn line is not a row
    train_trial(tiny_cfg, trunk, out_dir=out, data_root=tmp_path)
    assert f"{log}: its last line was cut short (written as the trial stopped); dropped" in capsys.readouterr().out
    _assert_as_uninterrupted(out, uninterrupted)
    assert log.read_text().count("\n") == 4 and log.read_text().endswith("}\n")


def test_a_damaged_line_before_the_last_is_named(tmp_path: Path) -> None:
    log = tmp_path / layout.METRICS
    log.write_text('{"iteration": 4}\n{"iteration": 8, "lo\n{"iteration": 12}\n')
    with pytest.raises(layout.CorruptFile, match=rf"{log}, line 2 of 3: not a JSON row"):
        layout.read_metrics(tmp_path)
    log.write_text('{"iteration": 4}\n{"iteration": 8, "lo\n')  # the last line, newline and all: torn
    assert layout.read_metrics(tmp_path) == [{"iteration": 4}]
