"""The study's Tune searcher: every lineage's trunk, then its branches; the LR from a list or Optuna,
optionally halved over the schedules.

Tune asks `suggest` for one trial at a time. The searcher answers with every lineage's trunk
(its longest schedule) first, then the shorter schedules, ordered by where they leave the trunk,
so that on a small machine a branch rarely waits for its fork checkpoint and on a cluster it
starts as soon as that checkpoint exists (`study.plan.trials` explains lineages and forks). Each
suggestion is a `Point`, given to Tune as its flat config (`Point.to_config`).

With `lr.values` the lineages are every (init, size, seed) group at every listed LR. With
`lr.low`/`lr.high` each group has its own Optuna study (ask and tell; the sampler is
`lr.sampler`, seeded with `lr.seed` and the group's name, so groups draw different LRs) that
proposes `lr.samples` LRs and learns from the bbox AP they reach; groups take turns, so a group's
later draws see its earlier results. The studies live in the run folder's Optuna journal
(`RunFiles`), which `optuna.load_study` and `optuna-dashboard` read while the study runs, and
which a `--resume` continues: a draw the searcher made but Tune never recorded is reused, not
drawn again. A lineage that diverges or fails gives Optuna no value (its trial is FAIL).

With `lr.halving` (`study.plan.halving`) a group's candidates train to the shortest schedule
first (the trunk in a segment up to that schedule's fork point, which pauses there, then the
branch); when all of them have a result, the best fraction continue their trunks to the next
schedule's fork point, and so on. Optuna then learns from the shortest schedule's AP (known
early); without halving, from the trunk's final AP. The decisions go to `halving.json`.
Without forking the shorter schedules are separate full runs at the same LRs, and halving is
refused (it continues trunks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from study import layout
from study.config import LRConfig, LRSampler, StudyConfig
from study.plan.evidence import look_sizes, wave
from study.plan.halving import Decision, Stage, rank, stages
from study.plan.schedule import fork_points
from study.plan.trials import Point, Size, Trial, lineage, sizes

METRIC, MODE = "bbox_AP", "max"
Group = tuple[str, Size, int]  # (init, size, seed): the trials one Optuna study proposes LRs for
SAMPLERS: tuple[str, ...] = typing.get_args(LRSampler)


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


def make_sampler(name: str, *, samples: int, seed: int) -> Any:
    """The Optuna sampler `name` (one of SAMPLERS) for a study of `samples` trials.

    - 'gp' (the default): the first half of the trials from a scrambled Sobol sequence (spread
      over the range even when asked all at once), then Optuna's Gaussian-process sampler (which
      falls back to the same sequence while too few trials have finished);
    - 'qmc': Sobol only; 'qmc-tpe': the Sobol start-up, then TPE (constant liar for running
      trials); 'tpe': TPE with as many random start-up trials; 'random';
    - 'tpe-default': TPE as Optuna ships it (10 random start-up trials: with fewer samples it
      never models anything).

    docs/running.md "LR search" has the measurement (bench/lr_sampler.py) that chose the default.
    """
    import optuna

    startup = max(1, samples // 2)
    if name == "qmc-tpe":
        return StartupThen(SobolSampler(seed), optuna.samplers.TPESampler(
            n_startup_trials=startup, constant_liar=True, seed=seed), startup)
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=startup, constant_liar=True, seed=seed)
    if name == "gp":
        return StartupThen(SobolSampler(seed), optuna.samplers.GPSampler(
            n_startup_trials=startup, seed=seed, independent_sampler=SobolSampler(seed),
            warn_independent_sampling=False), startup)
    if name == "qmc":
        return SobolSampler(seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe-default":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def _base_sampler() -> type:
    import optuna

    return optuna.samplers.BaseSampler


class SobolSampler(_base_sampler()):  # type: ignore[misc]
    """Trial k's value of every parameter from point k of a scrambled 1-D Sobol sequence (the
    search space here is one LR): unlike Optuna's QMCSampler it needs no finished trial first, so
    trials asked together are spread over the range, not random."""

    def __init__(self, seed: int, points: int = 256) -> None:
        from scipy.stats import qmc

        self._u = [float(u) for u in qmc.Sobol(d=1, scramble=True, seed=seed).random(points)[:, 0]]

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        u = self._u[trial.number % len(self._u)]
        low, high = param_distribution.low, param_distribution.high
        if getattr(param_distribution, "log", False):
            return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return low + u * (high - low)


class StartupThen(_base_sampler()):  # type: ignore[misc]
    """`startup` for trials numbered below `n`, `then` from there on."""

    def __init__(self, startup: Any, then: Any, n: int) -> None:
        self._startup, self._then, self._n = startup, then, n

    def _pick(self, trial: Any) -> Any:
        return self._startup if trial.number < self._n else self._then

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._pick(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._pick(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._pick(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._pick(trial).before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._pick(trial).after_trial(study, trial, state, values)


def group_name(group: Group) -> str:
    """e.g. 'scratch_n1000_s0': a group's Optuna study name."""
    init, size, seed = group
    return f"{init}_{size.name_part}_s{seed}"


def group_seed(lr: LRConfig, group: Group) -> int:
    """The group's sampler seed: `lr.seed` mixed with its name (deterministic; differs by group)."""
    return zlib.crc32(f"{lr.seed}/{group_name(group)}".encode())


# --------------------------------------------------------------------------------------------------
# The run folder's files the searcher writes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """Where the searcher keeps the Optuna journal and halving's decisions: the run folder
    `name` of the store at `storage`. On a URI store the journal is kept in this node's folder and
    pushed after every change (the driver is its one writer)."""

    storage: str
    name: str

    def _store(self) -> Any:
        from study.tune.storage import Store

        return Store(self.storage)

    def journal(self) -> Path:
        """The journal's local path, pulled from the store first if it is remote."""
        store = self._store()
        if not store.remote:
            path = store.local(f"{self.name}/{layout.OPTUNA_JOURNAL}")
            path.parent.mkdir(parents=True, exist_ok=True)
            return path
        from study.tune.storage import node_dir

        path = node_dir("optuna") / self.name / layout.OPTUNA_JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            store.get(f"{self.name}/{layout.OPTUNA_JOURNAL}", path)
        return path

    def journal_changed(self) -> None:
        store = self._store()
        if store.remote:
            store.put(self.journal(), f"{self.name}/{layout.OPTUNA_JOURNAL}")

    def results(self) -> Any:
        """The run's results so far (`study.analysis.results.load_results`), read from the store."""
        import tempfile

        from study.analysis.results import load_results
        from study.tune.storage import fetch_run

        store = self._store()
        if not store.remote:
            return load_results(store.local(self.name))
        with tempfile.TemporaryDirectory() as tmp:
            return load_results(fetch_run(store, self.name, Path(tmp) / self.name))

    def write_decisions(self, decisions: list[Decision]) -> None:
        self._store().write_text(f"{self.name}/{layout.HALVING}",
                                 json.dumps([d.to_dict() for d in decisions], indent=1))


def open_study(journal: Path, group: Group, sampler: Any) -> Any:
    """The group's Optuna study in the journal file (created on first use)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # Tune's table says what runs
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.create_study(study_name=group_name(group), storage=storage, sampler=sampler,
                               direction="maximize", load_if_exists=True)


# --------------------------------------------------------------------------------------------------
# The searcher
# --------------------------------------------------------------------------------------------------


Key = tuple[Group, float]  # one lineage: a group at one LR


class StudySearcher(Searcher):
    def __init__(self, cfg: StudyConfig, *, forking: bool = True, files: RunFiles | None = None) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        grid, lr = cfg.grid, cfg.lr
        if lr.halving is not None and not forking:
            raise ValueError("halving continues the trunks of the kept LRs: it needs forking")
        if lr.is_search and files is None:
            raise ValueError("an Optuna search needs RunFiles (where its journal lives)")
        if cfg.evidence is not None and files is None:
            raise ValueError("adding seeds while a claim is open needs RunFiles (where the results are)")
        self._cfg = cfg
        self._look = 0  # with evidence: the look the trials in flight lead to (0-based)
        self._stopped = cfg.evidence is None  # no more seeds to add
        self._outstanding: set[str] = set()  # Tune trials suggested, not yet complete
        self._lr = lr
        self._files = files
        self._forks = fork_points(grid.schedule, cfg.solver)
        self._longest = max(grid.schedule)
        self._forking = forking
        self._keep = None if lr.halving is None else lr.halving.keep
        self._stages: list[Stage] = stages(grid.schedule, cfg.solver) if self._keep is not None else []
        self._draws = self._draws_for([(init, size, seed) for init in grid.init for size in sizes(grid)
                                       for seed in wave(cfg, 0)])
        self._ready: list[Point] = []  # trunk segments that continue (halving), suggested first
        self._branches: list[Point] = []
        self._points: dict[str, Point] = {}  # Tune trial id -> what it trains
        self._numbers: dict[Key, int] = {}  # the lineage's trial number in its group's Optuna study
        self._stage: dict[Key, int] = {}  # halving: the stage a candidate is in
        self._results: dict[Group, dict[int, dict[float, float | None]]] = {}  # halving: stage -> LR -> AP
        self._decisions: list[Decision] = []
        self._told: dict[Group, list[tuple[float, float | None]]] = {}  # (LR, AP) Optuna learnt, per group
        self._orphans: dict[Group, list[int]] = {}  # Optuna trials drawn but never given to Tune
        self._studies: dict[Group, Any] = {}  # opened lazily: not pickled

    # -- Tune's interface ----------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the metric, mode and space are the study's own

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._look_ended():
            self._after_look()  # (normally done when the look's last trial completed)
        point = self._next()
        if point is None:
            # None: waiting for a halving stage or the end of a look
            return Searcher.FINISHED if self._finished() and self._stopped else None
        self._points[trial_id] = point
        self._outstanding.add(trial_id)
        return point.to_config()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._outstanding.discard(trial_id)
        self._complete(trial_id, result, error)
        if self._look_ended():
            self._after_look()  # the look's last trial: judge now (Tune asks no more after the last look)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        point = self._points.get(trial_id)
        if point is None:
            return
        ap = None if error or not result else result.get(METRIC)
        if ap is not None and (not isinstance(ap, (int, float)) or math.isnan(ap)):
            ap = None  # diverged: NaN
        key: Key = ((point.trial.init, point.trial.size, point.trial.seed), point.trial.base_lr)
        if self._keep is None:
            if point.fork_iter is None and point.trial.schedule == self._longest:  # a trunk: the lineage's end
                self._tell(key, ap)
            return
        stage = self._stage.get(key)
        if stage is None or not self._ranks(point, self._stages[stage]):
            return
        self._results.setdefault(key[0], {}).setdefault(stage, {})[key[1]] = ap
        if stage == 0:
            self._tell(key, ap)
        self._decide(key[0], stage)

    # -- what to train next --------------------------------------------------------------------

    def _next(self) -> Point | None:
        if self._ready:
            return self._ready.pop(0)
        if self._draws:
            group, lr = self._draws.pop(0)
            if lr is None:
                lr = self._ask(group)
            return self._start(group, lr)
        if self._branches:
            return self._branches.pop(0)
        return None

    def _finished(self) -> bool:
        """Nothing left to suggest at this look, and no halving stage waiting for results."""
        if self._keep is None:
            return True
        return all(stage == len(self._stages) for stage in self._stage.values())

    def _look_ended(self) -> bool:
        """With evidence: every trial of the current look has ended and it has not been judged."""
        return (not self._stopped and not self._outstanding and not self._ready and not self._draws
                and not self._branches and self._finished())

    def _draws_for(self, groups: list[Group]) -> list[tuple[Group, float | None]]:
        """The lineages to start for `groups`: each at every listed LR, or `lr.samples` Optuna draws."""
        lr = self._lr
        return ([(g, None) for _ in range(lr.samples) for g in groups] if lr.is_search
                else [(g, v) for v in lr.values for g in groups])

    def _after_look(self) -> None:
        """Judge the claims on every seed so far (`study.analysis.sequential`); while one is open and
        a look remains, queue the next wave of seeds in the training-set sizes with open claims."""
        from study.analysis.sequential import judge_study, open_sizes

        assert self._files is not None and self._cfg.evidence is not None
        cfg = self._cfg
        found, _ = judge_study(self._files.results(), cfg)
        settled = ", ".join(f"{c.claim}{f' ({c.init})' if c.init else ''} {c.verdict} on {c.size}"
                            for c in found if c.verdict != "INCONCLUSIVE") or "none settled"
        sizes_open = open_sizes(found)
        last = self._look + 1 == len(look_sizes(cfg))
        n = look_sizes(cfg)[self._look]
        head = f"look {self._look + 1} of {len(look_sizes(cfg))} ({n} seed{'s' if n > 1 else ''}): {settled}"
        if not sizes_open or last:
            self._stopped = True
            left = "" if not sizes_open else f"; left open: {', '.join(c.claim for c in found if c.verdict == 'INCONCLUSIVE')}"
            print(f"{head}{left}; no more seeds", flush=True)
            return
        self._look += 1
        seeds = wave(cfg, self._look)
        print(f"{head}; open on {', '.join(sorted(sizes_open))} images: adding seed(s) "
              f"{', '.join(map(str, seeds))}", flush=True)
        self._draws += self._draws_for([(init, size, seed) for init in cfg.grid.init for size in sizes(cfg.grid)
                                        if size.label in sizes_open for seed in seeds])

    def _start(self, group: Group, lr: float) -> Point:
        """The first trial of a new lineage; its other trials are queued."""
        trunk = self._trunk(group, lr)
        if self._keep is None:
            head, branches = lineage(trunk, self._forks, forking=self._forking)
            self._queue_branches(branches)
            return head
        self._stage[(group, lr)] = 0
        return self._stage_points(trunk, self._stages[0])

    def _trunk(self, group: Group, lr: float) -> Trial:
        """The lineage's longest schedule: its trunk."""
        init, size, seed = group
        return Trial(init=init, schedule=self._longest, base_lr=lr, seed=seed, size=size)  # type: ignore[arg-type]

    def _stage_points(self, trunk: Trial, stage: Stage) -> Point:
        """A halving stage of one candidate: its trunk segment (returned) and its branch (queued)."""
        if stage.last:
            return Point(trunk, self._longest, start_at=stage.trunk_from)
        branch = Point(dataclasses.replace(trunk, schedule=stage.schedule), self._longest,
                       fork_iter=stage.trunk_to)
        self._queue_branches([branch])
        return Point(trunk, self._longest, fork_at=(stage.trunk_to,), start_at=stage.trunk_from,
                     stop_at=stage.trunk_to)

    def _queue_branches(self, branches: list[Point]) -> None:
        self._branches += branches
        self._branches.sort(key=lambda b: b.trial.schedule)  # stable: trunk order within a schedule

    def _ranks(self, point: Point, stage: Stage) -> bool:
        """Whether `point` is the trial whose result ranks its candidate at `stage`: the branch of
        the stage's schedule, or at the last stage the trunk's final segment."""
        if stage.last:
            return point.fork_iter is None and point.stop_at is None
        return point.fork_iter == stage.trunk_to and point.trial.schedule == stage.schedule

    def _decide(self, group: Group, stage: int) -> None:
        """When every candidate of `group` at `stage` has a result: rank them, continue the kept."""
        alive = [lr for (g, lr), s in self._stage.items() if g == group and s == stage]
        results = self._results[group][stage]
        if any(lr not in results for lr in alive):
            return
        assert self._keep is not None
        ranked, kept = rank({lr: results[lr] for lr in alive}, self._keep)
        if self._stages[stage].last:
            kept = []  # the lineages are complete
        else:
            init, size, seed = group
            self._decisions.append(Decision(init=init, size=size.label, seed=seed,
                                            schedule=self._stages[stage].schedule, ranked=tuple(ranked),
                                            kept=tuple(kept), dropped=tuple(lr for lr in alive if lr not in kept)))
            if self._files is not None:
                self._files.write_decisions(self._decisions)
        for lr in alive:
            self._stage[(group, lr)] = stage + 1 if lr in kept else len(self._stages)
        for lr in kept:
            self._ready.append(self._stage_points(self._trunk(group, lr), self._stages[stage + 1]))

    # -- Optuna --------------------------------------------------------------------------------

    def _study(self, group: Group) -> Any:
        if group not in self._studies:
            assert self._files is not None
            study = open_study(self._files.journal(), group,
                               make_sampler(self._lr.sampler, samples=self._lr.samples,
                                            seed=group_seed(self._lr, group)))
            known = {n for (g, _), n in self._numbers.items() if g == group}
            from optuna.trial import TrialState

            self._orphans[group] = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                                    if t.number not in known]
            self._studies[group] = study
        return self._studies[group]

    def _ask(self, group: Group) -> float:
        """The group's next LR: a draw that was made before a restart and never reached Tune, or a new one."""
        import optuna

        study = self._study(group)
        if self._orphans[group]:
            number = self._orphans[group].pop(0)
            lr = float(study.get_trials(deepcopy=False)[number].params["lr"])
        else:
            trial = study.ask({"lr": optuna.distributions.FloatDistribution(self._lr.low, self._lr.high, log=True)})
            number, lr = trial.number, float(trial.params["lr"])
            assert self._files is not None
            self._files.journal_changed()
        self._numbers[(group, lr)] = number
        return lr

    def _tell(self, key: Key, ap: float | None) -> None:
        if key not in self._numbers:
            return  # a grid LR
        from optuna.trial import TrialState

        group = key[0]
        study = self._study(group)
        number = self._numbers[key]
        if study.get_trials(deepcopy=False)[number].state != TrialState.RUNNING:
            return  # told before a restart (Tune re-ran the trial that completed it)
        if ap is None:
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, ap)
        assert self._files is not None
        self._files.journal_changed()
        self._told.setdefault(group, []).append((key[1], ap))

    # -- reading it back -----------------------------------------------------------------------

    def told(self) -> dict[Group, list[tuple[float, float | None]]]:
        """Per (init, size, seed) group: the (LR, bbox AP) of each lineage Optuna learnt from, in
        order (AP None for a lineage that diverged or errored)."""
        return {g: list(v) for g, v in self._told.items()}

    def decisions(self) -> list[Decision]:
        return list(self._decisions)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_studies"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._studies = {}  # reopened from the journal on first use (which finds the orphans)
