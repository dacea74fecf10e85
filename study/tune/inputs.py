"""A study's inputs given as URIs: annotation files, image folders and pretrained weights in the
same kind of store the study writes to (`s3://bucket/coco/annotations/instances_train2017.json`,
`s3://bucket/coco/train2017`, `s3://bucket/weights/R-50-GN.pkl`; any URI pyarrow opens, with an
S3-compatible server's `?endpoint_override=...` kept).

Each node pulls each input once, into its own folder (`node_dir(layout.INPUTS)`), the first time a
trial there needs it: a lock file makes the other trials of the node wait for that one pull, and
a record of what was pulled (names and sizes) written last marks it complete, so a pull cut short
(a node lost, a full disk) is redone, never read half-done. Every object is checked for its size
as it comes (`Store.get`). Trials then read the local copy. Local paths are used as they are.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from study import layout
from study.config import SplitFiles, StudyConfig
from study.layout import is_uri
from study.tune.storage import Store, node_dir


def split_uri(uri: str) -> tuple[Store, str]:
    """(the store of `uri`'s parent folder, with the query kept; the object's name in it)."""
    location, mark, query = uri.partition("?")
    parent, _, name = location.rstrip("/").rpartition("/")
    return Store(parent + mark + query), name


def listing(uri: str) -> dict[str, int]:
    """Every object under the folder `uri`: {path relative to it: size} (empty if none)."""
    store, name = split_uri(uri)
    return store.list_files(name)


def pull(uri: str, *, folder: bool = False, progress: Callable[[str], None] = print) -> Path:
    """This node's copy of the object `uri` (or, with `folder`, of every object under it), pulled
    the first time a process of this node asks for it (see the module docstring)."""
    cache = node_dir(layout.INPUTS)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    store, name = split_uri(uri)
    home = cache / key
    dest = home / name
    with open(cache / f"{key}{layout.LOCK}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other trials wait here for this pull
        if (home / layout.PULLED).is_file():
            return dest
        if folder:
            files = store.list_files(name)
            if not files:
                raise FileNotFoundError(f"{uri}: no such folder, or no files in it")
            progress(f"pulling {len(files)} files ({sum(files.values()) / 1e6:,.1f} MB) of {uri} to {dest}")
            for rel, size in sorted(files.items()):
                local = dest / rel
                if not (local.is_file() and local.stat().st_size == size):  # kept from a pull cut short
                    store.get(f"{name}/{rel}", local, size=size)
        else:
            progress(f"pulling {uri} to {dest}")
            if not store.get(name, dest):
                raise FileNotFoundError(f"{uri}: no such object")
            files = {name: dest.stat().st_size}
        layout.atomic_write_text(home / layout.PULLED, json.dumps(files))
    return dest


def localized(cfg: StudyConfig, weights: str | None,
              progress: Callable[[str], None] = print) -> tuple[StudyConfig, str | None]:
    """(`cfg` with its URI annotation files and image folders replaced by this node's copies,
    `weights` likewise), pulling what this node does not have yet."""
    def local(files: SplitFiles | None) -> SplitFiles | None:
        if files is None:
            return None
        return SplitFiles(annotations=str(pull(files.annotations, progress=progress))
                         if is_uri(files.annotations) else files.annotations,
                         images=str(pull(files.images, folder=True, progress=progress))
                         if is_uri(files.images) else files.images)

    data = dataclasses.replace(cfg.data, train=local(cfg.data.train), val=local(cfg.data.val))
    if weights is not None and is_uri(weights):
        weights = str(pull(weights, progress=progress))
    return dataclasses.replace(cfg, data=data), weights
