"""The study's Tune searcher: every lineage's trunk, then its branches; the LR from a list or Optuna.

Tune asks `suggest` for one trial at a time. The searcher answers with every lineage's trunk
(its longest schedule) first, then the shorter schedules, ordered by where they leave the trunk,
so that on a small machine a branch rarely waits for its fork checkpoint and on a cluster it
starts as soon as that checkpoint exists (study/plan.py explains lineages and forks).

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
from study.plan import fork_points, size_label, sizes

METRIC, MODE = "bbox_AP", "max"


class StudySearcher(Searcher):
    def __init__(self, cfg: StudyConfig, *, forking: bool = True) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        grid = cfg.grid
        groups = [(init, size_label(size), seed)
                  for init in grid.init for size in sizes(grid) for seed in grid.seeds]
        self._forks = fork_points(grid.schedule, cfg.solver)
        self._longest = max(grid.schedule)
        self._forking = forking
        self._optuna: dict[tuple[Any, ...], OptunaSearch] = {}
        if cfg.lr.is_search:
            import optuna

            lr_range = optuna.distributions.FloatDistribution(cfg.lr.low, cfg.lr.high, log=True)
            self._optuna = {g: OptunaSearch(space={"lr": lr_range},
                                            metric=METRIC, mode=MODE,
                                            sampler=optuna.samplers.TPESampler(seed=cfg.lr.seed))
                            for g in groups}
            self._trunks: list[tuple[tuple[Any, ...], float | None]] = [
                (g, None) for _ in range(cfg.lr.samples) for g in groups]
        else:
            self._trunks = [(g, lr) for lr in cfg.lr.values for g in groups]
        self._branches: list[dict[str, Any]] = []
        self._owner: dict[str, tuple[Any, ...]] = {}  # trunk trial id -> its group's Optuna

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the metric, mode and space are the study's own

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._trunks:
            group, lr = self._trunks.pop(0)
            if lr is None:
                lr = self._optuna[group].suggest(trial_id)["lr"]
                self._owner[trial_id] = group
            init, size, seed = group
            point = {"init": init, "size": size, "seed": seed, "lr": lr, "trunk_schedule": self._longest}
            for schedule, at in self._forks.items():
                self._branches.append({**point, "schedule": schedule, "fork_at": [],
                                       "fork_iter": at if self._forking else None})
            self._branches.sort(key=lambda b: b["schedule"])  # stable: trunk order within a schedule
            return {**point, "schedule": self._longest, "fork_iter": None,
                    "fork_at": sorted(self._forks.values()) if self._forking else []}
        if self._branches:
            return self._branches.pop(0)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            self._optuna[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._optuna[self._owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
