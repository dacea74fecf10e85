"""StudySearcher: trunks first, then branches by fork point; the LR from a list or per-cell Optuna
(persisted in the run folder's journal); successive halving over the schedules."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from study.config import study_from_dict
from study.plan.budget import plan_study
from study.tune.searcher import RunFiles, StudySearcher

SOLVER = {"ims_per_batch": 2, "unit_iters": 10, "drops_before_end": [4, 2], "warmup_iters": 1}
GRID = study_from_dict({
    "name": "s", "solver": SOLVER,
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 2, 3], "train_images": [8], "seeds": [0]},
    "lr": {"values": [0.01, 0.02]},
})
SEARCH = study_from_dict({
    "name": "s", "solver": SOLVER,
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 3], "train_images": [],
             "data_fraction": [0.5], "seeds": [0, 1]},
    "lr": {"low": 0.001, "high": 0.1, "samples": 2, "seed": 3},
})


def _files(tmp_path: Path) -> RunFiles:
    return RunFiles(str(tmp_path), "s")


def _drain(searcher: StudySearcher, complete: bool = False) -> list[dict]:
    out = []
    while True:
        trial_id = f"t{len(out)}"
        point = searcher.suggest(trial_id)
        if point == "FINISHED":
            return out
        assert isinstance(point, dict)
        out.append(point)
        if complete:
            searcher.on_trial_complete(trial_id, {"bbox_AP": point["lr"] * 100, "iteration": 1})


def test_grid_trunks_first_then_branches_in_fork_order() -> None:
    points = _drain(StudySearcher(GRID))
    assert len(points) == 2 * 2 * 3  # lineages (2 inits x 2 LRs) x schedules
    trunks, branches = points[:4], points[4:]
    assert all(p["schedule"] == 3 and p["fork_iter"] is None and p["fork_at"] == [6, 16] for p in trunks)
    assert {(p["init"], p["lr"]) for p in trunks} == {(i, lr) for i in ("scratch", "pretrained")
                                                     for lr in (0.01, 0.02)}
    assert [p["schedule"] for p in branches] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [p["fork_iter"] for p in branches] == [6] * 4 + [16] * 4  # each schedule's first drop
    assert all(p["trunk_schedule"] == 3 and p["fork_at"] == [] for p in branches)


def test_without_forking_every_schedule_runs_from_the_start() -> None:
    points = _drain(StudySearcher(GRID, forking=False))
    assert len(points) == 12 and all(p["fork_iter"] is None and p["fork_at"] == [] for p in points)


def test_optuna_proposes_samples_per_cell_in_range_and_learns(tmp_path: Path) -> None:
    import optuna

    searcher = StudySearcher(SEARCH, files=_files(tmp_path))
    points = _drain(searcher, complete=True)
    trunks = [p for p in points if p["schedule"] == 3]
    assert len(trunks) == 2 * 2 * 2 and len(points) == 16  # (2 inits x 2 seeds) x 2 samples, x 2 schedules
    assert all(0.001 <= p["lr"] <= 0.1 for p in points)
    by_group: dict[tuple, list[float]] = {}
    for p in trunks:
        by_group.setdefault((p["init"], p["size"], p["seed"]), []).append(p["lr"])
    assert all(len(lrs) == 2 and lrs[0] != lrs[1] for lrs in by_group.values())
    assert len({lrs[0] for lrs in by_group.values()}) == 4  # each cell's sampler has its own seed
    told = searcher.told()  # what each cell's Optuna learnt from: its own two trunks, with their AP
    assert len(told) == 4 and all(
        [(lr, pytest.approx(lr * 100)) for lr in by_group[(init, size.label, seed)]] == results
        for (init, size, seed), results in told.items())
    branches = [p for p in points if p["schedule"] == 1]
    assert sorted(p["lr"] for p in branches) == sorted(p["lr"] for p in trunks)  # same LRs as trunks
    # the studies are in the run folder's journal, for optuna.load_study and optuna-dashboard
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "s" / "optuna.journal")))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["pretrained_frac0.5_s0", "pretrained_frac0.5_s1", "scratch_frac0.5_s0", "scratch_frac0.5_s1"]
    study = optuna.load_study(study_name="scratch_frac0.5_s1", storage=storage)
    assert [(t.params["lr"], t.value) for t in study.trials] == [
        (lr, pytest.approx(lr * 100)) for lr in by_group[("scratch", "frac0.5", 1)]]


def test_a_restored_searcher_reuses_the_draws_tune_never_saw(tmp_path: Path) -> None:
    """Tune saves the searcher's state now and then; a driver killed after more draws leaves
    trials in the journal that the saved state does not know. The restored searcher gives those
    draws to Tune instead of drawing again: the journal ends with each planned trial once."""
    import optuna

    first = StudySearcher(SEARCH, files=_files(tmp_path))
    seen = [first.suggest(f"t{i}") for i in range(3)]
    first.save(str(tmp_path / "searcher.pkl"))
    lost = [first.suggest(f"t{i}") for i in range(3, 5)]  # drawn, then the driver is killed
    journal = tmp_path / "s" / "optuna.journal"
    shutil.copy(journal, tmp_path / "journal_at_kill")

    again = StudySearcher(SEARCH, files=_files(tmp_path))
    again.restore(str(tmp_path / "searcher.pkl"))
    resumed = []
    while (p := again.suggest(f"r{len(resumed)}")) != "FINISHED":
        assert isinstance(p, dict)
        resumed.append(p)
        again.on_trial_complete(f"r{len(resumed) - 1}", {"bbox_AP": 10.0})
    assert [p["lr"] for p in resumed[:2]] == [p["lr"] for p in lost]  # the orphans, in order
    trunks = [p for p in seen + resumed if p["schedule"] == 3]
    assert len(trunks) == 8 and len(seen + resumed) == 16
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = [t for s in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
    assert len(trials) == 8 and sorted(t.params["lr"] for t in trials) == sorted(p["lr"] for p in trunks)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 5  # the 3 seen before the kill were never told


# --------------------------------------------------------------------------------------------------
# Halving, through a stand-in for Tune: runs points FIFO, a branch only once its trunk segment is
# done, and counts the iterations each trains.
# --------------------------------------------------------------------------------------------------

HALVING = study_from_dict({
    "name": "s", "solver": SOLVER,  # 1x 10, 2x 20, 3x 30; forks 1x at 6, 2x at 16
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 2, 3], "train_images": [8], "seeds": [0]},
    "lr": {"values": [0.01, 0.02, 0.04, 0.08], "halving": {"keep": 0.5}},
})
LENGTH = {1.0: 10, 2.0: 20, 3.0: 30}


def objective(init: str, lr: float, schedule: float) -> float:
    """AP peaks at LR 0.02 for scratch and 0.04 for pretrained, grows with the schedule; 0.08
    diverges for scratch."""
    if init == "scratch" and lr == 0.08:
        return float("nan")
    best = 0.02 if init == "scratch" else 0.04
    return 10 * schedule - 5 * abs(math.log2(lr / best))


def run_like_tune(searcher: StudySearcher, slots: int = 3) -> tuple[list[dict], int]:
    """Every suggested config, and the iterations trained in all."""
    done_segments: set[tuple] = set()  # (init, lr, stop_at) of finished trunk segments
    trunk_at: dict[tuple, int] = {}  # (init, lr) -> where its trunk stands
    running: list[tuple[str, dict]] = []
    suggested, iterations, finished, n = [], 0, False, 0
    while True:
        while not finished and len(running) < slots:
            config = searcher.suggest(f"t{n}")
            if config == "FINISHED":
                finished = True
            elif config is None:
                break  # the searcher waits for a stage's results
            else:
                running.append((f"t{n}", config))
                suggested.append(config)
                n += 1
        if not running:
            assert finished, "the searcher waits, but nothing runs"
            return suggested, iterations
        for i, (tid, c) in enumerate(running):
            if c["fork_iter"] is None or (c["init"], c["lr"], c["fork_iter"]) in done_segments:
                break
        else:
            raise AssertionError("every running branch waits for a trunk that is not running")
        tid, c = running.pop(i)
        lineage = (c["init"], c["lr"])
        if c["fork_iter"] is None:  # a trunk (segment): continues from where the trunk stands
            assert c["start_at"] == trunk_at.get(lineage, 0), "a segment must start where the last paused"
            end = c["stop_at"] or LENGTH[c["schedule"]]
            iterations += end - c["start_at"]
            trunk_at[lineage] = end
            done_segments.add((*lineage, c["stop_at"]))
            result = {"bbox_AP": objective(c["init"], c["lr"], 1.5), "status": "paused"} if c["stop_at"] \
                else {"bbox_AP": objective(c["init"], c["lr"], c["schedule"]), "status": "finished"}
        else:
            iterations += LENGTH[c["schedule"]] - c["fork_iter"]
            result = {"bbox_AP": objective(c["init"], c["lr"], c["schedule"]), "status": "finished"}
        searcher.on_trial_complete(tid, result)


def test_halving_keeps_the_best_lrs_and_trains_exactly_the_planned_iterations(tmp_path: Path) -> None:
    searcher = StudySearcher(HALVING, files=_files(tmp_path))
    suggested, iterations = run_like_tune(searcher)
    # scratch: 0.08 diverges at 1x; of the 4, the best 2 by 1x AP (0.02, then 0.01 before 0.04 on
    # the tie) go on to 2x, the best of those (0.02) to 3x. Pretrained: 0.04, 0.02 (tie with 0.08,
    # smaller LR first), then 0.04.
    got = [(d.init, d.schedule, d.kept, d.dropped) for d in searcher.decisions()]
    assert sorted(got) == sorted([("scratch", 1.0, (0.02, 0.01), (0.04, 0.08)), ("scratch", 2.0, (0.02,), (0.01,)),
                                  ("pretrained", 1.0, (0.04, 0.02), (0.01, 0.08)),
                                  ("pretrained", 2.0, (0.04,), (0.02,))])
    # per group, candidates 4 -> 2 -> 1, as planned; a diverged one is never kept
    per_group = 4 * 10 + 2 * (20 - 6) + 1 * (30 - 16)
    plan = plan_study(HALVING)
    assert iterations == 2 * per_group == plan.iterations_halving
    assert len(suggested) == plan.tune_trials == 2 * (2 * 4 + 2 * 2 + 1)
    finals = {(c["init"], c["lr"]) for c in suggested if c["fork_iter"] is None and c["stop_at"] is None}
    assert finals == {("scratch", 0.02), ("pretrained", 0.04)}  # only the best trains 3x to its end
    assert all(c["fork_at"] == ([c["stop_at"]] if c["stop_at"] else []) for c in suggested if c["fork_iter"] is None)
    # the decisions are in the run folder, for the analysis
    import json

    written = json.loads((tmp_path / "s" / "halving.json").read_text())
    assert len(written) == 4 and written[0]["ranked"][0][1] is not None


def test_halving_waits_for_a_stage_instead_of_finishing() -> None:
    searcher = StudySearcher(HALVING)
    first = [searcher.suggest(f"t{i}") for i in range(16)]  # 8 segments, then 8 branches at 1x
    assert all(isinstance(c, dict) for c in first)
    assert searcher.suggest("t16") is None  # not FINISHED: the 2x stage needs the 1x results


def test_halving_without_forking_is_refused() -> None:
    with pytest.raises(ValueError, match="needs forking"):
        StudySearcher(HALVING, forking=False)


# --------------------------------------------------------------------------------------------------
# Seeds added while a claim is open (evidence)
# --------------------------------------------------------------------------------------------------

EVIDENCE = {
    "name": "s", "solver": {**SOLVER, "eval_period": 2},
    "grid": {"init": ["scratch", "pretrained"], "schedule": [1, 2], "train_images": [8], "seeds": [0, 1, 2]},
    "lr": {"values": [0.02]}, "analysis": {"early_iteration": 6, "margin": 1.5},
    "evidence": {"max_seeds": 5, "step": 1},
}


def _write_trial(run: Path, point: dict, gap_at_end: float) -> None:
    """The metric log a finished trial of `point` would leave: pretrained ahead by 10 AP early
    (+ a seed's jitter), `gap_at_end` (+ jitter) at its last evaluations."""
    from study import layout
    from study.plan.trials import Point

    trial = Point.from_config(point).trial
    end = round(trial.schedule * SOLVER["unit_iters"])
    jitter = (trial.seed * 7919 % 13) / 13 - 0.5  # in [-0.5, 0.5), a seed's own
    folder = run / layout.TRIALS / trial.name()
    folder.mkdir(parents=True, exist_ok=True)
    for it in range(2, end + 1, 2):
        ahead = (10.0 if it <= 6 else gap_at_end) + jitter
        ap = 50.0 + it + (ahead if trial.init == "pretrained" else 0.0)
        layout.append_metrics(folder, {"iteration": it, "status": "finished" if it == end else "running",
                                       **trial.columns(), "bbox_AP": ap, "segm_AP": ap})


def _run_waves(tmp_path: Path, gap_at_end: float) -> tuple[list[dict], list[str]]:
    """Drive the searcher as Tune would, each trial ending (and writing its log) before the next
    suggestion; returns the points and the searcher's printed look lines."""
    import contextlib
    import io

    cfg = study_from_dict(EVIDENCE)
    searcher = StudySearcher(cfg, files=_files(tmp_path))
    points, out = [], io.StringIO()
    with contextlib.redirect_stdout(out):
        while (point := searcher.suggest(f"t{len(points)}")) != "FINISHED":
            assert isinstance(point, dict)
            _write_trial(tmp_path / "s", point, gap_at_end)
            searcher.on_trial_complete(f"t{len(points)}", {"bbox_AP": 1.0})
            points.append(point)
    return points, out.getvalue().splitlines()


def test_with_both_claims_settled_at_the_first_look_no_seed_is_added(tmp_path: Path) -> None:
    points, lines = _run_waves(tmp_path, gap_at_end=0.0)
    assert sorted({p["seed"] for p in points}) == [0, 1, 2] and len(points) == 3 * 2 * 2
    assert len(lines) == 1 and lines[0].startswith("look 1 of 3 (3 seeds): faster_early SUPPORTED on 8")
    assert "catches_up SUPPORTED on 8" in lines[0] and lines[0].endswith("no more seeds")


def test_while_a_claim_is_open_the_searcher_adds_a_seed_at_each_look_up_to_max_seeds(tmp_path: Path) -> None:
    # a final gap of 1.5 AP with jitter: never inside the 1.5 margin, never clear of it
    points, lines = _run_waves(tmp_path, gap_at_end=1.5)
    assert [p["seed"] for p in points][-4:] == [4, 4, 4, 4]  # the last wave: seed 4, 2 inits x 2 schedules
    assert sorted({p["seed"] for p in points}) == [0, 1, 2, 3, 4] and len(points) == 5 * 2 * 2
    assert [line.split(":")[0] for line in lines] == ["look 1 of 3 (3 seeds)", "look 2 of 3 (4 seeds)",
                                                       "look 3 of 3 (5 seeds)"]
    assert lines[0].endswith("open on 8 images: adding seed(s) 3") and lines[1].endswith("adding seed(s) 4")
    assert "faster_early SUPPORTED" in lines[0] and lines[2].endswith("left open: catches_up; no more seeds")
