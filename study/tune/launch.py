"""Starting Ray and launching Ray Train jobs: the one place that sizes `ray.init` and builds a
`TorchTrainer`, for the study's trials and for the backbone's pre-training alike; and the row as
Tune receives it (`tune_row`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from study.plan.trials import Trial

# Environment defaults for Ray, set by `ray_env_defaults` before Ray starts (its processes
# inherit them); a value already in the environment wins.
RAY_ENV_DEFAULTS = {
    # Ray Train polls its workers this often; its 2 s default adds seconds to every short trial.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's classic table: one line per trial, our columns
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",  # the dashboard's Train API lists runs
}


def ray_env_defaults() -> None:
    """Put `RAY_ENV_DEFAULTS` into this process's environment where they are not set."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def start_ray(*, cpus: int, address: str | None = None, resources: dict[str, float] | None = None,
              dashboard: bool = True) -> str | None:
    """Start Ray (or join the cluster at `address`) unless it runs already; returns the dashboard's
    address when this call started Ray with one. A local instance gets every core of the machine,
    and at least `cpus` logical CPUs, so that one job's workers always fit."""
    import ray

    ray_env_defaults()
    if ray.is_initialized():
        return None
    if address:
        return ray.init(address=address).dashboard_url
    kwargs: dict[str, Any] = {} if dashboard else {"include_dashboard": False}
    context = ray.init(num_cpus=max(os.cpu_count() or 1, cpus), resources=resources, **kwargs)
    return context.dashboard_url if dashboard else None


def tune_row(trial: Trial, row: dict[str, Any]) -> dict[str, Any]:
    """A metric row as Tune gets it: with the trial's name, and the iteration as `timesteps_total`,
    the x-axis of Tune's TensorBoard curves (Tune's own count of results otherwise)."""
    return {**row, "trial": trial.name(), "timesteps_total": row.get("iteration", 0)}


def fit_torch(worker: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str,
              storage_path: str, workers: int, use_gpu: bool = False,
              resources_per_worker: dict[str, float] | None = None, keep_checkpoints: int | None = None,
              max_failures: int = 0, callbacks: list[Any] | None = None,
              placement_strategy: str = "PACK") -> Any:
    """Run `worker(config)` on `workers` Ray Train workers (DDP over gloo on CPUs, NCCL on GPUs);
    returns Ray Train's Result. `config` is plain data: it crosses into every worker.

    `name` names the run under `storage_path`, so that a restarted job finds its own snapshot;
    Ray Train keeps its last `keep_checkpoints` reported checkpoints (all with None), and restarts
    the whole worker group from the last one up to `max_failures` times. The workers' placement
    group follows `placement_strategy` (PACK, STRICT_PACK: one node, SPREAD, STRICT_SPREAD)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    ray_env_defaults()
    return TorchTrainer(
        worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker,
                                               placement_strategy=placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks or []),
    ).fit()
