"""The weights a study's pretrained arm loads: pre-trained once (in this process, or on Ray Train
workers), cached under the storage, and on shared storage pushed once for every node to pull."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from study import layout
from study.config import PretrainConfig, StudyConfig
from study.train.pretrain import (PretrainRecord, cached_checkpoint_path, classification_data, save_checkpoint,
                                  train_classifier)
from study.tune.storage import Store, node_dir


def run_pretrain(pcfg: PretrainConfig, *, backbone: str, out: str | Path,
                 data_dir: str | Path, ray_storage: str | None = None,
                 progress: Callable[[str], None] = print) -> PretrainRecord:
    """Pre-train and write the checkpoint to `out`; return its record. With one worker and no
    GPU it trains in this process (no Ray); with more workers, or GPUs (`pcfg.gpus_per_worker`),
    data-parallel on Ray Train, which asks Ray for the GPUs (the same loop, sharded), its
    checkpoint passing through `ray_storage` (see `study.tune.jobs.pretrain_on_ray`)."""
    data_dir = Path(data_dir).resolve()  # Ray workers change directory
    if pcfg.workers == 1 and pcfg.gpus == 0:
        state, record = train_classifier(pcfg, backbone=backbone, data_dir=data_dir, progress=progress)
    else:
        from study.tune.jobs import pretrain_on_ray

        if pcfg.data == "synthetic":  # generate once, before the workers race to do it
            classification_data(pcfg, data_dir, progress)
        state, record = pretrain_on_ray(pcfg, backbone=backbone, data_dir=data_dir, storage=ray_storage)
    save_checkpoint(out, state, record)
    progress(f"wrote {out}")
    return record


def ensure_pretrained(pcfg: PretrainConfig, *, backbone: str, cache_dir: str | Path,
                      ray_storage: str | None = None, progress: Callable[[str], None] = print) -> Path:
    """The cached checkpoint for (pcfg, backbone), pre-training it first if it is missing.

    What a study with `init: pretrained` and no `model.pretrained_weights` uses: the first run
    pays for pre-training, later runs (and other studies with the same settings) reuse it.
    """
    path = cached_checkpoint_path(pcfg, backbone, cache_dir)
    if path.is_file():
        progress(f"pretrained backbone: reusing {path}")
        return path
    progress(f"pretrained backbone: {path.name} is not cached yet, pre-training it")
    run_pretrain(pcfg, backbone=backbone, out=path, data_dir=Path(cache_dir) / "pretrain_data",
                 ray_storage=ray_storage, progress=progress)
    return path


def study_weights(cfg: StudyConfig, storage: str | Path, ray_storage: str | None = None) -> str:
    """The weights a study's pretrained arm loads: `model.pretrained_weights` when set, else the
    cached `study pretrain` checkpoint of its `pretrain` section (made first if missing) under
    `storage`'s pretrained/ folder."""
    if cfg.model.pretrained_weights is not None:
        return cfg.model.pretrained_weights
    return str(ensure_pretrained(cfg.pretrain, backbone=cfg.model.backbone,
                                 cache_dir=Path(storage) / layout.PRETRAINED, ray_storage=ray_storage))


def weights_in_store(cfg: StudyConfig, store: Store) -> tuple[str | None, bool]:
    """Make the pre-trained backbone every pretrained trial loads, before any trial starts.
    Returns the weights for init 'pretrained' and whether that is a path in the store (a URI
    store: the backbone is pushed there once, and each trial pulls it)."""
    if not store.remote:
        weights = (study_weights(cfg, store.local(""), ray_storage=store.uri(layout.PRETRAINED, layout.TRAIN_RUNS))
                   if "pretrained" in cfg.grid.init else None)
        return weights or cfg.model.pretrained_weights, False
    if "pretrained" not in cfg.grid.init or cfg.model.pretrained_weights is not None:
        return cfg.model.pretrained_weights, False  # a user's file: it must exist on every node
    cache = node_dir(layout.PRETRAINED)
    name = cached_checkpoint_path(cfg.pretrain, cfg.model.backbone, cache).name
    shared = f"{layout.PRETRAINED}/{name}"
    store.get(shared, cache / name)  # made by an earlier study, if any
    # a pre-training job on Ray Train hands its weights back through the store: its GPU may be elsewhere
    local = Path(study_weights(cfg, node_dir(""), ray_storage=store.uri(layout.PRETRAINED, layout.TRAIN_RUNS)))
    if not store.exists(shared):
        store.put(local, shared)
    return shared, True
