"""Studies that lack an arm, a second schedule, a second size or a second seed: every analysis,
sentence and figure still works, nothing prints NaN, and what cannot be computed is said once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from study.analysis.report import write_report
from study.plan.trials import Size, Trial

UNIT = 20
NAN = re.compile(r"\bnan\b", re.I)


def _write(run: Path, init: str, schedule: int, size: int, seed: int) -> None:
    trial = Trial(init=init, schedule=schedule, base_lr=0.02, seed=seed, size=Size(size))  # type: ignore[arg-type]
    folder = run / "trials" / trial.name()
    folder.mkdir(parents=True)
    end = schedule * UNIT
    rows = []
    for it in range(10, end + 1, 10):
        ap = (10.0 if init == "pretrained" else 5.0) + it / 10 + 0.3 * seed + (size == 1000)
        rows.append({"iteration": it, "status": "finished" if it == end else "running", "lr": 0.02,
                     **trial.columns(), "loss": 1.0, "bbox_AP": ap, "segm_AP": ap / 2, "images_seen": 2 * it,
                     "instances_seen": 4 * it, "pixels_seen": 2 * it * 4096, "images_per_s": 10.0,
                     "pretrain_images_seen": 1000 if init == "pretrained" else 0,
                     "pretrain_instances_seen": 1000 if init == "pretrained" else 0,
                     "pretrain_pixels_seen": 64000 if init == "pretrained" else 0})
    folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


VARIANTS = {  # name -> (inits, schedules, sizes, seeds, a sentence the report must contain)
    "only scratch": (["scratch"], [1, 2], [1000, 100], [0, 1],
                     "Not judged: no finished pretrained arm in this study"),
    "only pretrained": (["pretrained"], [1, 2], [1000, 100], [0, 1],
                        "Not judged: no finished scratch arm in this study"),
    "one schedule": (["scratch", "pretrained"], [2], [1000, 100], [0, 1],
                     "Not judged: overfits (scratch): one finished schedule on 1000, 100 images: no fall to look for"),
    "one size": (["scratch", "pretrained"], [1, 2], [1000], [0, 1],
                 "Not judged: small_data_gap: one training-set size in this study"),
    "one seed": (["scratch", "pretrained"], [1, 2], [1000, 100], [0], "With 1 seed there is no interval"),
    "a missing cell": (["scratch", "pretrained"], [1, 2], [1000, 100], [0, 1],
                       "Not judged: overfits (pretrained): one finished schedule on 1000, 100 images: no fall to look for"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_partial_study_reports_without_nan_and_says_what_is_missing(tmp_path: Path, name: str) -> None:
    inits, schedules, sizes, seeds, stated = VARIANTS[name]
    for init in inits:
        for schedule in schedules[:1] if (name, init) == ("a missing cell", "pretrained") else schedules:
            for size in sizes:
                for seed in seeds:
                    _write(tmp_path, init, schedule, size, seed)
    (tmp_path / "study.yaml").write_text(
        f"name: toy\nmodel: {{backbone: resnet18, norm: gn}}\nsolver: {{unit_iters: {UNIT}, drops_before_end: "
        f"[10, 5], warmup_iters: 1, eval_period: 10}}\ngrid: {{init: {inits}, schedule: {schedules}, "
        f"train_images: {sizes}, seeds: {seeds}}}\nlr: {{values: [0.02]}}\n")
    report, summary = write_report(tmp_path, tmp_path / "out")
    md, page = report.read_text(), (tmp_path / "out" / "report.html").read_text()
    claims = (tmp_path / "out" / "claims.json").read_text()
    for text, what in ((summary, "summary"), (md, "report.md"), (page, "report.html"), (claims, "claims.json")):
        assert not NAN.search(text), (what, NAN.search(text) and text[max(0, NAN.search(text).start() - 200):][:400])
    assert stated in summary and stated in md
    assert md.count(stated) == 1  # said once
    for png in ("learning_curves", "gap_curve", "final_vs_schedule", "samples_seen", "lr_sensitivity"):
        assert (tmp_path / "out" / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
