"""Which seeds a study trains, and in which waves, when it adds seeds only while a claim is open
(`evidence` in the study file; `study.analysis.sequential` judges the claims at each look).

The grid's seeds are the first wave and the first look. Each later wave adds `evidence.step`
seeds, numbered on from the largest grid seed (grid.seeds [0, 1, 2] with step 2: then 3 and 4,
then 5 and 6, ...), up to `evidence.max_seeds` in all. Without `evidence` the grid's seeds are
the only wave and the claims are judged once.
"""

from __future__ import annotations

import dataclasses

from study.config import StudyConfig


def study_seeds(cfg: StudyConfig) -> tuple[int, ...]:
    """Every seed the study may train, in the order the waves add them."""
    seeds = list(cfg.grid.seeds)
    if cfg.evidence is None:
        return tuple(seeds)
    nxt = max(seeds) + 1
    while len(seeds) < cfg.evidence.max_seeds:
        if nxt not in seeds:
            seeds.append(nxt)
        nxt += 1
    return tuple(seeds)


def look_sizes(cfg: StudyConfig) -> tuple[int, ...]:
    """How many seeds have trained at each planned look: the grid's, then `step` more each time,
    the last at `max_seeds`."""
    first = len(cfg.grid.seeds)
    if cfg.evidence is None:
        return (first,)
    sizes = [first]
    while sizes[-1] < cfg.evidence.max_seeds:
        sizes.append(min(sizes[-1] + cfg.evidence.step, cfg.evidence.max_seeds))
    return tuple(sizes)


def wave(cfg: StudyConfig, look: int) -> tuple[int, ...]:
    """The seeds that train before look `look` (0-based) and after the previous one."""
    sizes, seeds = look_sizes(cfg), study_seeds(cfg)
    return seeds[(sizes[look - 1] if look else 0):sizes[look]]


def up_to_look(cfg: StudyConfig, look: int) -> StudyConfig:
    """`cfg` with the seeds of looks 0..`look` as its grid's seeds and no evidence: what the study
    has trained by then, for pricing it (`study.plan.budget.plan_study`)."""
    seeds = study_seeds(cfg)[:look_sizes(cfg)[look]]
    return dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, seeds=seeds), evidence=None)
