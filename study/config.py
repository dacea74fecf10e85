"""The typed study configuration: frozen dataclasses loaded from a YAML file in `search_spaces/`.

One tree flows top-down: `StudyConfig` holds `data`, `model`, `pretrain`, `solver`, `grid`, `lr`,
`resources` and `analysis`.
Every value is checked when the file is loaded, before Ray starts; an error names the file, the key
(as a dotted path), the bad value and what is allowed. Unknown keys are errors, not silently ignored.

Numbers in `solver` are given at the reference batch `solver.ims_per_batch`, in iterations (as
detectron2 does), never in epochs: a smaller training set must not change the iteration budget.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from models.choices import Backbone, Init, Norm, Precision, Profile, classifier_norm
from study.data.synthetic import SynthSpec
from study.errors import ConfigError, require
from study.layout import is_uri

DataSource = Literal["synthetic", "coco"]
Placement = Literal["auto", "PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"]
Full = Literal["full"]


# --------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFiles:
    """One COCO split: an instances JSON file and the folder its `file_name`s are relative to."""

    annotations: str
    images: str


@dataclass(frozen=True)
class DataConfig:
    """Where the detection data comes from and how training subsets are drawn."""

    source: DataSource = "synthetic"
    train: SplitFiles | None = None
    val: SplitFiles | None = None
    synthetic: SynthSpec = field(default_factory=SynthSpec)  # the embedded set (`study data synth`)
    # Training subsets (grid.train_images / grid.data_fraction) are nested prefixes of one
    # permutation drawn with this seed, so the 1k subset lies inside the 10k subset (paper §5).
    subset_seed: int = 0
    # Training images without any (non-crowd) instance are skipped, as Detectron does.
    filter_empty: bool = True
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.source == "coco":
            require(self.train is not None, "train", "required when source is 'coco' "
                     "(a mapping with keys 'annotations' and 'images')")
            require(self.val is not None, "val", "required when source is 'coco' "
                     "(a mapping with keys 'annotations' and 'images')")
        require(self.loader_workers >= 0, "loader_workers", f"{self.loader_workers!r} must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """The detector: Mask R-CNN + FPN on a ResNet backbone, with the paper's norm everywhere."""

    backbone: Backbone = "resnet50"
    norm: Norm = "gn"
    # 'paper' is Detectron's Mask R-CNN; 'tiny' has fewer proposals/RoIs and narrower heads so
    # that an iteration on 2 CPU cores takes well under a second.
    profile: Profile = "paper"
    min_size: int = 800  # shorter image side after resizing (paper: 800)
    max_size: int = 1333  # longer side cap (paper: 1333)
    # For init=pretrained: a `study pretrain` checkpoint, a state-dict file (torchvision or timm
    # names, `.pt`/`.pth`/`.safetensors`), Detectron's `.pkl` (R-50-GN.pkl), or a torchvision
    # weights name such as 'ResNet50_Weights.IMAGENET1K_V2'; a local path or an s3:// URI.
    pretrained_weights: str | None = None
    # A checkpoint of the other norm kind (BatchNorm weights into a GN detector, or back) is refused
    # before Ray starts; true loads its convs only and keeps the norms' fresh init (named in the log).
    allow_fresh_norms: bool = False

    def __post_init__(self) -> None:
        require(self.min_size > 0, "min_size", f"{self.min_size!r} must be > 0")
        require(self.max_size >= self.min_size, "max_size",
                 f"{self.max_size!r} must be >= min_size ({self.min_size})")


@dataclass(frozen=True)
class PretrainConfig:
    """The backbone's pre-training stage (`study pretrain`; the ImageNet analogue)."""

    data: str = "synthetic"  # 'synthetic' or 'imagefolder:PATH'
    # The classifier's norm; null: the one whose tensors all load into the study's detector (gn
    # for a GN detector, bn for syncbn / bn / frozen_bn; see `models.choices.classifier_norm`);
    # outside a study (`study pretrain` without --study), gn (`norm_used`). A checkpoint whose
    # norm kind differs loads its convs only, and the load report names every tensor left fresh.
    norm: Norm | None = None
    image_size: int = 64
    # The default recipe reaches 90%+ val accuracy on the synthetic set in about 4 minutes of a
    # 2-core CPU with GN and bf16 (750 iterations of 64; docs/internals.md has the pre-training table).
    epochs: float = 8.0
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "adamw"
    base_lr: float = 2e-3  # linear warm-up, then cosine to zero
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    train_images: int = 6000  # of the synthetic set
    val_images: int = 500
    seed: int = 0
    workers: int = 1  # Ray Train workers; 1 without GPUs runs in the calling process, without Ray
    # GPUs per worker; null: the study's resources.gpus_per_worker (`study pretrain` without
    # --study: 1 where a GPU is visible, else 0). With GPUs the pre-training is a Ray Train job,
    # one worker included.
    gpus_per_worker: float | None = None
    loader_workers: int = 0
    # bf16 autocast of the forward pass where the device has native bf16 (a CUDA GPU that
    # supports it, a CPU with AVX512-BF16 or AMX), else fp32; or force either.
    precision: Precision = "auto"

    @property
    def norm_used(self) -> str:
        """The norm the classifier is trained with: `norm`, or gn when nothing resolved it."""
        return self.norm or "gn"

    def __post_init__(self) -> None:
        require(self.data == "synthetic" or (self.data.startswith("imagefolder:") and len(self.data) > 12),
                 "data", f"{self.data!r} is not valid: expected 'synthetic' or 'imagefolder:PATH'")
        for key in ("image_size", "batch_size", "train_images", "val_images", "workers"):
            require(getattr(self, key) > 0, key, f"{getattr(self, key)!r} must be > 0")
        require(self.epochs > 0, "epochs", f"{self.epochs!r} must be > 0")
        require(self.base_lr > 0, "base_lr", f"{self.base_lr!r} must be > 0")
        require(self.batch_size % self.workers == 0, "batch_size",
                 f"{self.batch_size} must be divisible by workers ({self.workers})")
        require(self.warmup_iters >= 0 and self.loader_workers >= 0, "warmup_iters",
                 "warmup_iters and loader_workers must be >= 0")
        require(self.gpus_per_worker is None or self.gpus_per_worker >= 0, "gpus_per_worker",
                f"{self.gpus_per_worker!r} must be >= 0, or null for the study's resources.gpus_per_worker")

    @property
    def gpus(self) -> float:
        """GPUs per worker, 0 where nothing resolved `gpus_per_worker`."""
        return self.gpus_per_worker or 0.0


@dataclass(frozen=True)
class SolverConfig:
    """SGD and the schedule, in iterations at the reference batch `ims_per_batch` (paper §4)."""

    base_lr: float = 0.02
    ims_per_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # Detectron: no decay on norm parameters
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    unit_iters: int = 90_000  # the "1x" schedule
    # LR drops this many iterations before the end of any schedule (paper: 60k and 20k).
    drops_before_end: tuple[int, ...] = (60_000, 20_000)
    gamma: float = 0.1
    eval_period: int = 10_000
    # Evaluations in the final phase (after the schedule's last LR drop) every this many
    # iterations, counted back from the end, beside eval_period's: the claims on final AP average
    # each seed over that phase (the final window). null: eval_period's only.
    final_eval_period: int | None = None
    # Checkpoints (the full training state) every this many iterations, beside the evaluations'
    # own; null: at the evaluations only. What a preempted trial loses at most.
    checkpoint_period: int | None = None
    # A progress report (training losses, LR, images/s) to Tune and TensorBoard every this many
    # iterations; not an evaluation: the trial's metric log and the analysis never see it.
    log_period: int = 20
    clip_grad_norm: float | None = None  # the paper does not clip
    # bf16 autocast of the forward pass where the device has native bf16 (a CUDA GPU that supports
    # it; a CPU with AVX512-BF16 or AMX), else fp32; or force either (docs/performance.md has the levers).
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        require(self.base_lr > 0, "base_lr", f"{self.base_lr!r} must be > 0")
        require(self.ims_per_batch > 0, "ims_per_batch", f"{self.ims_per_batch!r} must be > 0")
        require(0 <= self.momentum < 1, "momentum", f"{self.momentum!r} must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", f"{self.weight_decay!r} must be >= 0")
        require(self.weight_decay_norm >= 0, "weight_decay_norm",
                 f"{self.weight_decay_norm!r} must be >= 0")
        require(self.warmup_iters >= 0, "warmup_iters", f"{self.warmup_iters!r} must be >= 0")
        require(0 < self.warmup_factor <= 1, "warmup_factor",
                 f"{self.warmup_factor!r} must be in (0, 1]")
        require(self.unit_iters > 0, "unit_iters", f"{self.unit_iters!r} must be > 0")
        drops = self.drops_before_end
        require(all(d > 0 for d in drops), "drops_before_end", f"{list(drops)!r}: each must be > 0")
        require(list(drops) == sorted(drops, reverse=True) and len(set(drops)) == len(drops),
                 "drops_before_end", f"{list(drops)!r} must be strictly decreasing, e.g. [60000, 20000]")
        require(0 < self.gamma < 1, "gamma", f"{self.gamma!r} must be in (0, 1)")
        require(self.eval_period > 0, "eval_period", f"{self.eval_period!r} must be > 0")
        require(self.final_eval_period is None or self.final_eval_period > 0, "final_eval_period",
                f"{self.final_eval_period!r} must be > 0, or null for eval_period's evaluations only")
        require(self.checkpoint_period is None or self.checkpoint_period > 0, "checkpoint_period",
                f"{self.checkpoint_period!r} must be > 0, or null for a checkpoint at each evaluation only")
        require(self.log_period > 0, "log_period", f"{self.log_period!r} must be > 0")
        require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm",
                 f"{self.clip_grad_norm!r} must be > 0, or null for no clipping")

    def iterations(self, multiplier: float) -> tuple[int, tuple[int, ...]]:
        """(max_iter, the iterations where the LR drops) of the `multiplier`x schedule: k x
        unit_iters, each drop a fixed distance before the end (paper §4). A ConfigError if the
        first drop would come before the end of warm-up (or below zero), which happens for
        schedules shorter than the drops."""
        max_iter = round(multiplier * self.unit_iters)
        milestones = tuple(max_iter - d for d in self.drops_before_end)
        if milestones and milestones[0] <= self.warmup_iters:
            raise ConfigError("grid.schedule", (
                f"{multiplier:g}x ends at iteration {max_iter}, so its first LR drop "
                f"({self.drops_before_end[0]} before the end) falls at {milestones[0]}, not after "
                f"the {self.warmup_iters}-iteration warm-up; use a longer schedule, or shorter "
                "solver.drops_before_end"))
        return max_iter, milestones


@dataclass(frozen=True)
class GridConfig:
    """The factors enumerated exhaustively; each combination is one cell of the study."""

    init: tuple[Init, ...] = ("scratch", "pretrained")
    schedule: tuple[float, ...] = (1.0,)  # multipliers of solver.unit_iters ("1x", "2x", ...)
    # Training-set sizes: image counts ('full' = the whole training set) and/or fractions.
    train_images: tuple[int | Full, ...] = ("full",)
    data_fraction: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for key in ("init", "schedule", "seeds"):
            require(len(getattr(self, key)) > 0, key, "the grid is empty: list at least one value")
        require(len(self.train_images) + len(self.data_fraction) > 0, "train_images",
                 "the grid has no training-set size: list train_images and/or data_fraction")
        for key in ("init", "schedule", "train_images", "data_fraction", "seeds"):
            values = getattr(self, key)
            require(len(set(values)) == len(values), key, f"{list(values)!r} lists a value twice")
        for s in self.schedule:
            require(s > 0, "schedule", f"{s!r} must be > 0 (a multiple of solver.unit_iters)")
        for n in self.train_images:
            require(n == "full" or n > 0, "train_images", f"{n!r} must be > 0 or 'full'")
        for f in self.data_fraction:
            require(0 < f <= 1, "data_fraction", f"{f!r} must be in (0, 1]")


# Optuna samplers for the LR search (`study.tune.searcher.make_sampler` builds them; docs/running.md "LR
# search" has the measurement that chose the default).
LRSampler = Literal["gp", "qmc", "qmc-tpe", "tpe", "random", "tpe-default"]


@dataclass(frozen=True)
class HalvingConfig:
    """Successive halving over the schedules: every LR candidate of a lineage group trains to the
    shortest schedule; the best `keep` fraction (by that schedule's final bbox AP) continue their
    trunks to the next schedule, and so on (`study.plan.halving`)."""

    keep: float = 0.5

    def __post_init__(self) -> None:
        require(0 < self.keep < 1, "keep", f"{self.keep!r} must be between 0 and 1 (exclusive)")


@dataclass(frozen=True)
class LRConfig:
    """The base LR: a grid (`values`) or a log-uniform range searched by Optuna; optionally halved
    over the schedules (`halving`)."""

    values: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    samples: int = 4  # Optuna trials per cell
    seed: int = 0  # the sampler's seed; each (init, size, seed) group's study mixes in its own name
    sampler: LRSampler = "gp"
    halving: HalvingConfig | None = None  # off unless given

    def __post_init__(self) -> None:
        ranged = self.low is not None or self.high is not None
        require(bool(self.values) != ranged, "values",
                 "give either a list of values (a grid) or low and high (an Optuna search), not both "
                 "and not neither")
        if ranged:
            require(self.low is not None and self.high is not None, "low",
                     "an Optuna search needs both low and high")
            assert self.low is not None and self.high is not None
            require(0 < self.low < self.high, "high",
                     f"need 0 < low < high, got low={self.low!r}, high={self.high!r}")
            require(self.samples > 0, "samples", f"{self.samples!r} must be > 0")
        for v in self.values:
            require(v > 0, "values", f"{v!r} must be > 0")
        require(len(set(self.values)) == len(self.values), "values",
                 f"{list(self.values)!r} lists a value twice")
        require(self.halving is None or self.candidates >= 2, "halving",
                 f"halving ranks the LR candidates of a cell, and there is {self.candidates}: give at "
                 "least 2 values or samples, or remove halving")

    @property
    def candidates(self) -> int:
        """LRs per (init, size, seed) group at the shortest schedule."""
        return self.samples if self.is_search else len(self.values)

    @property
    def is_search(self) -> bool:
        return not self.values


@dataclass(frozen=True)
class ResourcesConfig:
    """What one trial runs on: Ray Train workers and what each of them holds."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    max_concurrent_trials: int | None = None  # None: as many as the cluster fits
    max_failures: int = 1  # Tune restarts of a failed trial; it resumes from its last checkpoint
    # Where a multi-worker trial's workers go (Ray's placement strategies). auto: STRICT_PACK (one
    # node) for norm syncbn, whose statistics all-reduce every forward pass and must not cross
    # nodes; else PACK (as few nodes as fit, spilling over when none has room).
    placement: Placement = "auto"

    def __post_init__(self) -> None:
        require(self.workers > 0, "workers", f"{self.workers!r} must be > 0")
        require(self.gpus_per_worker >= 0, "gpus_per_worker", f"{self.gpus_per_worker!r} must be >= 0")
        require(self.cpus_per_worker > 0, "cpus_per_worker", f"{self.cpus_per_worker!r} must be > 0")
        require(self.max_concurrent_trials is None or self.max_concurrent_trials > 0,
                 "max_concurrent_trials", f"{self.max_concurrent_trials!r} must be > 0 or null")
        require(self.max_failures >= 0, "max_failures", f"{self.max_failures!r} must be >= 0")

    @property
    def in_process(self) -> bool:
        """A trial trains in its Tune trial's own process (one worker, no GPU), not as a Ray Train job."""
        return self.workers == 1 and self.gpus_per_worker == 0


@dataclass(frozen=True)
class AnalysisConfig:
    """How `study analyze` judges the paper's claims, fixed before the run (docs/analysis.md)."""

    # Where "pretrained is ahead early" is judged: the evaluations of the longest schedule's curve up
    # to this iteration (see early_window); default: half of the 1x schedule.
    early_iteration: int | None = None
    # [first, last] iterations of the longest schedule whose evaluations `faster_early` averages,
    # per seed, before the seeds are compared (every evaluation in it counts, not one); null: from
    # the first evaluation to early_iteration.
    early_window: tuple[int, ...] | None = None
    # AP within which scratch counts as having caught up (an equivalence margin). The analysis caps
    # it at max(1.5, 5% of the pretrained arm's AP) (the paper's 3x gap: 1.3 AP at ~40 AP), and at a
    # quarter of that AP.
    margin: float = 1.5

    def __post_init__(self) -> None:
        require(self.early_iteration is None or self.early_iteration > 0, "early_iteration",
                 f"{self.early_iteration!r} must be > 0, or null for half of the 1x schedule")
        require(self.margin > 0, "margin", f"{self.margin!r} must be > 0 (AP)")
        window = self.early_window
        require(window is None or (len(window) == 2 and 0 <= window[0] <= window[1]), "early_window",
                f"{list(window or [])!r} must be [first, last] iterations with 0 <= first <= last, or null "
                "for the evaluations up to early_iteration")


# How the looks' significance levels are spent (Lan-DeMets; `study.analysis.sequential`).
Spending = Literal["obrien_fleming", "pocock"]


@dataclass(frozen=True)
class EvidenceConfig:
    """Seeds added while a claim is open: after the grid's seeds (the first look) every claim is
    judged; while one is open and fewer than `max_seeds` have run, `step` more seeds train (in the
    training-set sizes whose claims are open) and the claims are judged again. The 5% of each
    verdict is spent over the planned looks (`spending`), so that looking more than once does not
    raise its error rate."""

    max_seeds: int
    step: int = 1
    spending: Spending = "obrien_fleming"

    def __post_init__(self) -> None:
        require(self.max_seeds > 1, "max_seeds", f"{self.max_seeds!r} must be > 1")
        require(self.step > 0, "step", f"{self.step!r} must be > 0")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: one YAML file in `search_spaces/`."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    lr: LRConfig = field(default_factory=lambda: LRConfig(values=(0.02,)))
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    evidence: EvidenceConfig | None = None  # null: the grid's seeds, judged once

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name and not self.name.startswith("."), "name",
                 f"{self.name!r} must be a non-empty folder name (no '/', not starting with '.')")
        for multiplier in self.grid.schedule:
            self.solver.iterations(multiplier)  # drops after warm-up, or a ConfigError
        longest = self.solver.iterations(max(self.grid.schedule))[0]
        early = self.analysis.early_iteration
        require(early is None or early <= longest, "analysis.early_iteration",
                f"{early!r} is past the end of the longest schedule (iteration {longest})")
        window = self.analysis.early_window
        require(window is None or window[1] <= longest, "analysis.early_window",
                f"{list(window or [])!r} ends past the end of the longest schedule (iteration {longest})")
        if self.evidence is not None:
            require(self.evidence.max_seeds > len(self.grid.seeds), "evidence.max_seeds",
                    f"{self.evidence.max_seeds!r} must exceed the {len(self.grid.seeds)} grid.seeds (the first "
                    "look), or remove evidence for a study judged once")
        if self.pretrain.norm is None:  # resolved here, so the checkpoint's cache key names it
            object.__setattr__(self, "pretrain",
                               dataclasses.replace(self.pretrain, norm=classifier_norm(self.model.norm)))
        if ("pretrained" in self.grid.init and self.model.pretrained_weights is None
                and not self.model.allow_fresh_norms
                and classifier_norm(self.pretrain.norm_used) != classifier_norm(self.model.norm)):
            raise ConfigError("pretrain.norm", f"{self.pretrain.norm!r} pre-trains norms the {self.model.norm!r} "
                              "detector cannot load: they would keep their fresh init; leave pretrain.norm "
                              "unset (it follows the detector), or set model.allow_fresh_norms: true")
        if self.pretrain.gpus_per_worker is None:
            object.__setattr__(self, "pretrain", dataclasses.replace(
                self.pretrain, gpus_per_worker=self.resources.gpus_per_worker))
        if self.model.norm == "syncbn" and self.resources.gpus_per_worker <= 0:
            raise ConfigError("model.norm", "'syncbn' needs GPUs (resources.gpus_per_worker > 0): "
                              "SyncBatchNorm does not run on CPU tensors; use 'gn' for CPU runs")

    @property
    def placement_strategy(self) -> str:
        """Ray's placement strategy for a trial's workers: `resources.placement`, with auto resolved."""
        if self.resources.placement != "auto":
            return self.resources.placement
        return "STRICT_PACK" if self.model.norm == "syncbn" and self.resources.workers > 1 else "PACK"


# --------------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> dataclasses, with every value checked against its type hint
# --------------------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    """How a type reads in an error message."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of ({_describe(typing.get_args(tp)[0])})"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or a ConfigError that says what `key` allows."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(tp)):
            return None
        if len(arms) == 1:  # Optional[X]: X's own, more precise, error
            return _convert(arms[0], value, key)
        for arm in arms:
            try:
                return _convert(arm, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"{value!r} is not valid: expected {_describe(tp)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"{value!r} is not valid: expected {_describe(tp)}")
        return tuple(_convert(typing.get_args(tp)[0], v, key) for v in value)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not valid: expected {_describe(tp)}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(key, f"{value!r} is not valid: expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not valid: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"{value!r} is not valid: expected an integer")
        return value
    if tp is float:
        # PyYAML reads '1e-4' (no dot) as a string: accept numeric strings for float keys.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"{value!r} is not valid: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"{value!r} is not valid: expected a string")
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported")  # a bug in this file


def _build(cls: Any, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(key, f"{data!r} is not valid: expected {_describe(cls)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            raise ConfigError(f"{key}.{k}" if key else str(k),
                              f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{key}.{k}" if key else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(key) from None
    except TypeError:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{key}.{missing[0]}" if key else missing[0], "required key is missing") from None
        raise


def study_from_dict(data: Any) -> StudyConfig:
    """Build and validate a StudyConfig from plain data (as YAML or `to_dict` gives it)."""
    return _build(StudyConfig, data, "")


def load_study(path: str | Path) -> StudyConfig:
    """Load and validate a study YAML file; errors name the file, the key, the value, the choices.

    Relative data paths are resolved against the current directory and stored absolute, because
    Ray workers run in a working directory of their own.
    """
    path = Path(path)
    data = read_space(path)
    try:
        cfg = study_from_dict(data)
    except ConfigError as e:
        raise e.in_file(path) from None
    return resolve_paths(cfg)


def read_space(path: Path, _seen: tuple[Path, ...] = ()) -> Any:
    """A study file's plain data, with `base: OTHER.yaml` (a path relative to the file) applied
    first: the base's mappings are merged key by key with this file's, whose values (scalars,
    lists, null) replace the base's. A file with a base sets its own `name`."""
    if not path.is_file():
        raise ConfigError("", f"no such study file: {path}", file=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("", f"not valid YAML: {e}", file=path) from None
    if not isinstance(data, dict) or "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError("base", f"{base!r} is not valid: expected the path of another study file", file=path)
    if "name" not in data:
        raise ConfigError("name", f"required with base: {base} (a space names its own run folder)", file=path)
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError("base", f"{base}: no such study file (looked for {base_path})", file=path)
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError("base", f"{base} leads back to {path.name} (a circle of bases)", file=path)
    return merge_spaces(read_space(base_path, (*_seen, path.resolve())), data)


def merge_spaces(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_spaces(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_paths(cfg: StudyConfig, base: Path | None = None) -> StudyConfig:
    """The same config with its data paths made absolute (against `base`, default: the cwd);
    URIs (`s3://...`) are kept as they are."""
    base = (base or Path.cwd()).resolve()

    def absolute(split: SplitFiles | None) -> SplitFiles | None:
        if split is None:
            return None
        return SplitFiles(**{key: value if is_uri(value) else str((base / value).resolve())
                             for key, value in (("annotations", split.annotations), ("images", split.images))})

    data = dataclasses.replace(cfg.data, train=absolute(cfg.data.train), val=absolute(cfg.data.val))
    return dataclasses.replace(cfg, data=data)


def to_dict(cfg: Any) -> Any:
    """Plain data (dicts, lists, scalars) for YAML, JSON and the Ray boundary."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_study(cfg: StudyConfig) -> str:
    """The resolved config as YAML; `study_from_dict(yaml.safe_load(...))` gives it back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
