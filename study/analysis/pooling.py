"""Several runs of one study judged as one: seed sets added by later runs.

A study that three seeds leave INCONCLUSIVE is settled by more seeds, and a researcher adds them
with a second run of the same study file under another name and other `grid.seeds`, then
`study analyze RUN_A RUN_B --out DIR`. The runs pool only when they are the same experiment: their
saved, resolved configs may differ in `name`, `grid.seeds` and `resources` (how a run was named
and what it ran on) and in nothing else, and no seed may be in two runs (a seed pooled twice
would count one pair twice and narrow the interval by a pair that is not independent).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study.analysis.results import load_results, run_config
from study.errors import ConfigError
from study.layout import RunInfo, read_run_info

MAY_DIFFER = ("name", "grid.seeds", "resources")


@dataclass(frozen=True)
class PooledRuns:
    """The runs' results as one frame (a `run` column says which run each row came from) and the
    config they share, with the union of their seeds."""

    results: pd.DataFrame
    config: dict[str, Any]
    seeds: dict[str, list[int]]  # run name -> its seeds, in the order given
    infos: dict[str, RunInfo | None]  # run name -> its run.json (None where it wrote none)
    caveat: str | None = None  # what differs between the runs that the config does not show

    def describe(self) -> str:
        text = "pooled from " + "; ".join(f"{name} (seeds {', '.join(map(str, s))})"
                                          for name, s in self.seeds.items())
        return f"{text}\n{self.caveat}" if self.caveat else text


def precision_caveat(config: Mapping[str, Any], machines: Mapping[str, Mapping[str, Any]]) -> str | None:
    """A warning when `precision: auto` meant bf16 in some runs and fp32 in others: CPU trials on
    machines with and without native bf16 (as each run recorded its machine; runs that did not
    record it are not judged)."""
    on_cpu = not config.get("resources", {}).get("gpus_per_worker")
    if not on_cpu or config.get("solver", {}).get("precision", "auto") != "auto":
        return None
    kinds = {name: m["cpu_native_bf16"] for name, m in machines.items() if "cpu_native_bf16" in m}
    if len(set(kinds.values())) < 2:
        return None
    bf16 = [name for name, native in kinds.items() if native]
    fp32 = [name for name, native in kinds.items() if not native]
    return (f"Caveat: solver.precision is auto, and the runs trained in different precisions: bf16 in "
            f"{', '.join(bf16)} (a CPU with native bf16), fp32 in {', '.join(fp32)}; the pooled interval "
            "mixes the two")


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for every leaf of a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _compared(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that make two runs the same experiment (everything but MAY_DIFFER)."""
    return {k: v for k, v in _flatten(raw).items()
            if not any(k == d or k.startswith(d + ".") for d in MAY_DIFFER)}


def pool_configs(configs: Mapping[str, Mapping[str, Any]],
                 trained: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """The shared config of runs (name -> the resolved config each saved) with their seeds
    joined, in the order given; a ConfigError naming the first key that differs, or a seed that
    two runs both trained. `trained` gives each run's seeds as its results hold them (a run with
    `evidence` trains more than its grid.seeds); without it, the configs' grid.seeds. The pooled
    runs are judged once, over all their seeds: the pooled config has no `evidence`."""
    names = list(configs)
    if not names:
        raise ConfigError("RUN_DIR", "no runs to pool")
    first = names[0]
    ref = _compared(configs[first])
    seen: dict[int, str] = {}
    for name in names:
        mine = _compared(configs[name])
        for key in sorted(set(ref) | set(mine)):
            if ref.get(key) != mine.get(key):
                raise ConfigError("RUN_DIR", f"{name} is not the same study as {first}: {key} is "
                                             f"{mine.get(key)!r} there and {ref.get(key)!r} in {first}; "
                                             f"runs pool only when they differ in {', '.join(MAY_DIFFER)}")
        for seed in (trained[name] if trained is not None else configs[name].get("grid", {}).get("seeds", [])):
            if seed in seen:
                raise ConfigError("RUN_DIR", f"seed {seed} is in both {seen[seed]} and {name}: a seed pooled "
                                             "twice would count one pair twice; pool runs with different seeds")
            seen[seed] = name
    pooled = copy.deepcopy(dict(configs[first]))
    pooled["grid"] = {**pooled.get("grid", {}), "seeds": list(seen)}
    pooled["evidence"] = None
    return pooled


def pool_runs(run_dirs: Sequence[str | Path]) -> PooledRuns:
    """Read and check several study runs (folders) for pooling: one results frame, one config."""
    dirs = [Path(d) for d in run_dirs]
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):  # the report names each run by its folder
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    configs = {}
    for name, d in zip(names, dirs):
        raw = run_config(d)
        if not raw:
            raise ConfigError("RUN_DIR", f"{d} has no saved study config (study.yaml): it cannot be checked to "
                                         "be the same study as the others, so it is not pooled")
        configs[name] = raw
    frames = [load_results(d).assign(run=name) for name, d in zip(names, dirs)]
    trained = {name: list(dict.fromkeys(int(s) for s in f["seed"])) or list(configs[name]["grid"]["seeds"])
               for name, f in zip(names, frames)}
    config = pool_configs(configs, trained)
    results = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    infos = {name: read_run_info(d) for name, d in zip(names, dirs)}
    machines = {name: info.machine for name, info in infos.items() if info is not None}
    return PooledRuns(results=results, config=config,
                      seeds=trained, infos=infos,
                      caveat=precision_caveat(config, machines))
