"""load_results reads the trials' own logs; the summary compares the arms at each cell's best LR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.analysis import best_lr, compare, summary
from study.results import final_rows, load_results
from study.trial import Trial, trial_row


def _write(run: Path, trial: Trial, rows: list[tuple[int, float, float]]) -> None:
    folder = run / "trials" / trial.name()
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for it, loss, ap in rows:
            status = "finished" if it == rows[-1][0] else "running"
            f.write(json.dumps({"iteration": it, "status": status, "lr": 0.1, **trial_row(trial),
                                "loss": loss, "bbox_AP": ap}) + "\n")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    # scratch: LR 0.02 is best (final 30/32 over seeds); pretrained: LR 0.04 (final 35/37)
    for seed, bump in ((0, 0.0), (1, 2.0)):
        for init, lr, early, final in (("scratch", 0.02, 5.0, 30.0), ("scratch", 0.04, 4.0, 20.0),
                                       ("pretrained", 0.02, 9.0, 25.0), ("pretrained", 0.04, 12.0, 35.0)):
            t = Trial(init=init, schedule=2, base_lr=lr, seed=seed, train_images=100)
            _write(tmp_path, t, [(10, 2.0 - early / 10, early + bump), (20, 1.0, final + bump)])
    _write(tmp_path, Trial(init="scratch", schedule=1, base_lr=0.02, seed=0, data_fraction=0.5),
           [(10, 1.5, 7.0)])
    return tmp_path


def test_load_results_has_every_row_and_the_size_label(run: Path) -> None:
    df = load_results(run)
    assert len(df) == 8 * 2 + 1 and df["trial"].nunique() == 9
    assert set(df["size"]) == {"100", "frac0.5"}
    assert list(df.columns[:8]) == ["trial", "init", "schedule", "size", "base_lr", "seed", "iteration", "status"]
    assert len(final_rows(df)) == 9 and (final_rows(df)["status"] == "finished").all()


def test_best_lr_and_the_gap(run: Path) -> None:
    df = load_results(run)
    best = best_lr(df).set_index(["init", "size", "schedule"])["base_lr"].to_dict()
    assert best == {("pretrained", "100", 2.0): 0.04, ("scratch", "100", 2.0): 0.02,
                    ("scratch", "frac0.5", 1.0): 0.02}
    final = final_rows(df.merge(best_lr(df), on=["init", "size", "schedule", "base_lr"]))
    table = compare(final).set_index(["size", "schedule"])
    row = table.loc[("100", 2.0)]
    assert row["scratch_mean"] == 31.0 and row["pretrained_mean"] == 36.0 and row["gap"] == 5.0
    assert row["scratch_spread"] == 1.0 and row["scratch_seeds"] == 2
    assert pytest.approx(table.loc[("frac0.5", 1.0), "scratch_mean"]) == 7.0


def test_summary_text(run: Path) -> None:
    text = summary(load_results(run))
    assert "     100       2x    31.00 ± 1.00    36.00 ± 1.00    +5.00" in text
    assert "(iteration 10; the longest schedule's row)" in text
    assert "     100      all     6.00 ± 1.00    13.00 ± 1.00    +7.00" in text  # early AP at best LRs
    assert "     100      all     1.50 ± 0.00     0.80 ± 0.00    -0.70" in text  # early loss
    with pytest.raises(FileNotFoundError, match="not a study run"):
        load_results(run / "nope")
