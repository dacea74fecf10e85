"""The study's Tune searcher: every lineage's trunk, then its branches; the LR from a list or Optuna.

Tune asks `suggest` for one trial at a time. The searcher answers with every lineage's trunk
(its longest schedule) first, then the shorter schedules, ordered by where they leave the trunk,
so that on a small machine a branch rarely waits for its fork checkpoint and on a cluster it
starts as soon as that checkpoint exists (`study.plan.trials` explains lineages and forks). Each
suggestion is a `Point`, given to Tune as its flat config (`Point.to_config`).

With `lr.values` the lineages are every (init, size, seed) group at every listed LR. With
`lr.low`/`lr.high` each group has its own `OptunaSearch` (TPE, log-uniform, seeded with
`lr.seed`, so every group starts from the same draws) that proposes `lr.samples` LRs and learns
from the bbox AP its trunks reach; groups take turns, so a group's later draws see its earlier
results. Without forking the shorter schedules are separate full runs at the same LRs. A trunk
that diverges gives Optuna no value (Tune marks it pruned); no AP is invented for it.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.config import StudyConfig
from study.plan.schedule import fork_points
from study.plan.trials import Point, Size, Trial, lineage, sizes

METRIC, MODE = "bbox_AP", "max"
Group = tuple[str, Size, int]  # (init, size, seed): the trials one Optuna study proposes LRs for


class StudySearcher(Searcher):
    def __init__(self, cfg: StudyConfig, *, forking: bool = True) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        grid = cfg.grid
        groups: list[Group] = [(init, size, seed)
                               for init in grid.init for size in sizes(grid) for seed in grid.seeds]
        self._forks = fork_points(grid.schedule, cfg.solver)
        self._longest = max(grid.schedule)
        self._forking = forking
        self._optuna: dict[Group, OptunaSearch] = {}
        if cfg.lr.is_search:
            import optuna

            lr_range = optuna.distributions.FloatDistribution(cfg.lr.low, cfg.lr.high, log=True)
            self._optuna = {g: OptunaSearch(space={"lr": lr_range},
                                            metric=METRIC, mode=MODE,
                                            sampler=optuna.samplers.TPESampler(seed=cfg.lr.seed))
                            for g in groups}
            self._trunks: list[tuple[Group, float | None]] = [
                (g, None) for _ in range(cfg.lr.samples) for g in groups]
        else:
            self._trunks = [(g, lr) for lr in cfg.lr.values for g in groups]
        self._branches: list[Point] = []
        self._owner: dict[str, tuple[Group, float]] = {}  # trunk trial id -> (its group, its LR)
        self._told: dict[Group, list[tuple[float, float | None]]] = {}  # (LR, final AP) per group

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the metric, mode and space are the study's own

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._trunks:
            group, lr = self._trunks.pop(0)
            if lr is None:
                lr = self._optuna[group].suggest(trial_id)["lr"]
                self._owner[trial_id] = (group, lr)
            init, size, seed = group
            trunk, branches = lineage(Trial(init=init, schedule=self._longest, base_lr=lr, seed=seed, size=size),
                                      self._forks, forking=self._forking)
            self._branches += branches
            self._branches.sort(key=lambda b: b.trial.schedule)  # stable: trunk order within a schedule
            return trunk.to_config()
        if self._branches:
            return self._branches.pop(0).to_config()
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            self._optuna[self._owner[trial_id][0]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            group, lr = self._owner[trial_id]
            self._optuna[group].on_trial_complete(trial_id, result, error)
            self._told.setdefault(group, []).append((lr, None if error or not result else result.get(METRIC)))

    def told(self) -> dict[Group, list[tuple[float, float | None]]]:
        """Per (init, size, seed) group: the (LR, final bbox AP) of each trunk Optuna learnt from,
        in order (AP None for an errored trunk)."""
        return {g: list(v) for g, v in self._told.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
