"""The study's messages, as frozen dataclasses: a training-set `Size`, a `Trial`, and the `Point`
the searcher suggests (a trial and its place in its lineage).

A *cell* is one combination of the grid factors (init, schedule, training-set size, seed); each
cell is trained at one or more LRs: one *trial* per (cell, LR). Trials that differ only in
`schedule` share a *lineage* (init, size, LR, seed): they follow the same trajectory until the
shorter schedule's first LR drop, because every schedule drops a fixed number of iterations
before its own end (paper §4). So the lineage's longest schedule is trained once (the *trunk*),
checkpointed at each shorter schedule's first drop (its *fork point*), and each shorter schedule
finishes as a *branch* from there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from models.choices import Init
from study.config import GridConfig


@dataclass(frozen=True)
class Size:
    """A training-set size: an image count or 'full' (`train_images`), or a fraction."""

    train_images: int | Literal["full"] | None = "full"
    data_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.train_images is None) == (self.data_fraction is None):
            raise ValueError(f"a Size has exactly one of train_images and data_fraction, got {self!r}")

    @property
    def label(self) -> str:
        """'full', '1000' or 'frac0.1': how the size reads in tables and in Tune's trial table."""
        return f"frac{self.data_fraction:g}" if self.data_fraction is not None else str(self.train_images)

    @property
    def name_part(self) -> str:
        """'nfull', 'n1000' or 'frac0.1': how the size reads in trial names."""
        return self.label if self.data_fraction is not None else f"n{self.train_images}"

    @classmethod
    def parse(cls, label: str) -> Size:
        """The Size whose `label` is `label`."""
        if label.startswith("frac"):
            return cls(train_images=None, data_fraction=float(label[4:]))
        return cls(train_images="full" if label == "full" else int(label))

    @classmethod
    def of(cls, train_images: Any, data_fraction: Any) -> Size:
        """The Size of a metric row's `train_images` and `data_fraction` columns (as pandas reads
        them: a missing value may be None or NaN, a count may be a float)."""
        if data_fraction is not None and not (isinstance(data_fraction, float) and math.isnan(data_fraction)):
            return cls(train_images=None, data_fraction=float(data_fraction))
        return cls(train_images="full" if train_images == "full" else int(train_images))


def sizes(grid: GridConfig) -> list[Size]:
    """The grid's training-set sizes: image counts first, then fractions."""
    return [Size(train_images=n) for n in grid.train_images] + \
        [Size(train_images=None, data_fraction=f) for f in grid.data_fraction]


@dataclass(frozen=True)
class Trial:
    """One cell of the grid with one LR: what a trial trains."""

    init: Init
    schedule: float
    base_lr: float
    seed: int
    size: Size = Size()

    def name(self) -> str:
        """e.g. 'scratch_3x_n1000_lr0.05_s0': the trial's folder, and its name in Tune."""
        return f"{self.init}_{self.schedule:g}x_{self.size.name_part}_lr{self.base_lr:g}_s{self.seed}"

    def columns(self) -> dict[str, Any]:
        """The trial's factors as every metric row carries them."""
        return {"init": self.init, "schedule": self.schedule, "base_lr": self.base_lr, "seed": self.seed,
                "train_images": self.size.train_images, "data_fraction": self.size.data_fraction}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the Ray boundary; `Trial.from_dict` rebuilds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(**{**data, "size": Size(**data["size"])})


@dataclass(frozen=True)
class Point:
    """What the searcher suggests: one trial, and where it sits in its lineage.

    A trunk (the lineage's longest schedule) trains from iteration 0 and writes a fork checkpoint
    at each iteration of `fork_at`; a branch with `fork_iter` starts from its trunk's checkpoint
    at that iteration. Without forking every trial trains from 0 (`fork_iter` None, no `fork_at`).
    With halving (`study.plan.halving`) a trunk trains in segments, one Tune trial each: from
    `start_at` (where its last segment paused) to `stop_at`, where it pauses with a checkpoint
    (None: to its end).
    """

    trial: Trial
    trunk_schedule: float
    fork_iter: int | None = None
    fork_at: tuple[int, ...] = ()
    start_at: int = 0
    stop_at: int | None = None

    @property
    def trunk(self) -> Trial:
        return dataclasses.replace(self.trial, schedule=self.trunk_schedule)

    def tune_name(self) -> str:
        """The Tune trial's name and folder: the trial's own, plus where a paused segment stops
        ('..._s0_to300'); every segment of a trunk shares the trial's folder of results."""
        return self.trial.name() + ("" if self.stop_at is None else f"_to{self.stop_at}")

    def to_config(self) -> dict[str, Any]:
        """Tune's config of the trial: flat keys, which its trial table and TensorBoard show."""
        t = self.trial
        return {"init": t.init, "size": t.size.label, "seed": t.seed, "lr": t.base_lr,
                "trunk_schedule": self.trunk_schedule, "schedule": t.schedule,
                "fork_iter": self.fork_iter, "fork_at": list(self.fork_at),
                "start_at": self.start_at, "stop_at": self.stop_at}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Point:
        trial = Trial(init=config["init"], schedule=float(config["schedule"]), base_lr=float(config["lr"]),
                      seed=int(config["seed"]), size=Size.parse(config["size"]))
        return cls(trial=trial, trunk_schedule=float(config["trunk_schedule"]),
                   fork_iter=config["fork_iter"], fork_at=tuple(config["fork_at"]),
                   start_at=int(config.get("start_at", 0)), stop_at=config.get("stop_at"))


def lineage(trunk: Trial, forks: dict[float, int], *, forking: bool = True) -> tuple[Point, list[Point]]:
    """The trunk's Point and its branches' (one per shorter schedule in `forks`, which maps each
    to its fork point). Without forking the branches are separate runs at the same LR."""
    head = Point(trunk, trunk.schedule, fork_at=tuple(sorted(forks.values())) if forking else ())
    branches = [Point(dataclasses.replace(trunk, schedule=schedule), trunk.schedule,
                      fork_iter=at if forking else None) for schedule, at in forks.items()]
    return head, branches
