"""Only the latest attempt of a trial writes its folder: an older one still running (its node cut
off from the head, not from the storage) is refused its next write and stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import layout
from study.config import StudyConfig
from study.errors import StaleAttempt
from study.plan.trials import Point, Trial
from study.train.loop import train_trial
from study.tune.attempt import Attempt
from study.tune.storage import Store, pusher
from study.tune.trial_fn import StudySetup, run_attempt
from tests.conftest import assert_same_curve

pytestmark = pytest.mark.slow  # two attempts of a trial racing for its folder: the full suite, not the fast lane


def test_a_newer_attempt_fences_an_older_one(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = Attempt.take(store, "run/trials/t")
    first.check()
    second = Attempt.take(store, "run/trials/t")
    second.check()
    with pytest.raises(StaleAttempt, match=rf"this attempt \({first.token[:8]}\) may no longer write .* attempt "
                                           rf"{second.token[:8]} on .* took it over"):
        first.check()
    assert json.loads((tmp_path / "run/trials/t/attempt.json").read_text())["token"] == second.token
    assert Attempt(**second.to_dict()) == second  # crosses the Ray boundary as plain data
    (tmp_path / "run/trials/t/attempt.json").unlink()
    with pytest.raises(StaleAttempt, match="its attempt record is gone"):
        second.check()


def test_a_push_after_a_takeover_is_refused_and_uploads_nothing(tmp_path: Path, s3_uri: str) -> None:
    store = Store(s3_uri)
    first = Attempt.take(store, "run/trials/t")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.jsonl").write_text('{"iteration": 4}\n')
    push = pusher(store, tmp_path, "run/trials", fence=first.check)
    push(tmp_path / "t" / "metrics.jsonl")
    (tmp_path / "t" / "metrics.jsonl").write_text('{"iteration": 4}\n{"iteration": 8}\n')
    second = Attempt.take(store, "run/trials/t")
    with pytest.raises(StaleAttempt):
        push(tmp_path / "t" / "metrics.jsonl")
    assert store.read_text("run/trials/t/metrics.jsonl") == '{"iteration": 4}\n'  # the older copy stays
    pusher(store, tmp_path, "run/trials", fence=second.check)(tmp_path / "t" / "metrics.jsonl")
    assert store.read_text("run/trials/t/metrics.jsonl").count("\n") == 2


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_a_retry_started_while_the_first_attempt_runs_takes_the_trial_over(
        where: str, tmp_path: Path, tiny_cfg: StudyConfig, tiny_trial: Trial, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt reaches its first evaluation (its row and checkpoint are in the folder);
    then a second attempt of the same trial starts, as Tune's retry on another node would, and runs
    to the end. The first goes on training: its next write is refused and it stops. The folder
    holds the second's files only, untouched since it finished, and its rows equal an
    uninterrupted run's."""
    monkeypatch.setenv("STUDY_LOCAL_DIR", str(tmp_path / "node"))  # each attempt's scratch folder
    storage = str(tmp_path / "runs") if where == "folder" else request.getfixturevalue("s3_uri")
    store = Store(storage)
    data = str(tmp_path / "data")
    setup = StudySetup(study=tiny_cfg, storage=store.uri(), name="run", data_root=data if where == "folder" else None,
                       pretrained_weights=None, weights_in_store=False)
    point = Point(tiny_trial, trunk_schedule=tiny_trial.schedule)
    folder = layout.trial_path("run", tiny_trial.name())
    train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "uninterrupted", data_root=data)

    def files() -> dict[str, bytes]:
        out = {}
        for name in store.listdir(folder):
            with_bytes = tmp_path / "copy"
            store.get(f"{folder}/{name}", with_bytes)
            out[name] = with_bytes.read_bytes()
        return out

    second_rows: list[dict] = []
    left_by_the_second: dict[str, bytes] = {}

    def first_report(row: dict) -> None:
        if row["iteration"] == 4 and not left_by_the_second:
            assert store.read_text(f"{folder}/metrics.jsonl").count("\n") == 1  # the row of 4 is stored
            run_attempt(setup, point, report=second_rows.append)  # a retry elsewhere, to its end
            left_by_the_second.update(files())

    with pytest.raises(StaleAttempt, match="took it over"):
        run_attempt(setup, point, report=first_report)
    assert [(r["iteration"], r["status"]) for r in second_rows] == [(8, "finished")]  # it resumed at 4
    assert files() == left_by_the_second  # the first wrote nothing after the takeover
    assert sorted(left_by_the_second) == ["attempt.json", "checkpoint.pt", "checksums.json", "metrics.jsonl"]
    final = tmp_path / "final"
    for name, content in left_by_the_second.items():
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        (final / name).write_bytes(content)
    assert layout.check_checkpoint(final / "checkpoint.pt").iteration == 8
    assert_same_curve(layout.read_metrics(final), layout.read_metrics(tmp_path / "uninterrupted"), [4, 8])
