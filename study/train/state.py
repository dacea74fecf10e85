"""A trial's training state in a checkpoint: model, optimizer, RNG per rank, the counters.

The file is a dict of tensors and plain values (`torch.load(weights_only=True)` reads it):
`model`, `optimizer`, `iteration`, `counts` (images, instances, pixels seen), `rng` and
`cuda_rng` (one state per rank: RPN/RoI sampling draws from them), `window` and `n_window` (the
loss sums since the last evaluation, summed over ranks). With all of it restored, a resumed run
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.weight_files import load_state_file
from study.config import StudyConfig
from study.layout import (CHECKPOINT, PREVIOUS_CHECKPOINT, check_checkpoint, read_checksums,
                          write_checkpoint, write_checksums)
from study.train.build import build_detector
from study.train.collectives import gather_over_ranks, rank, sum_over_ranks, world_size

COCO_CLASSES = 80


@dataclass
class Progress:
    """What a trial has done so far, beyond the weights: saved in and restored from checkpoints."""

    iteration: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"images": 0, "instances": 0, "pixels": 0})
    window: dict[str, float] = field(default_factory=dict)  # loss sums since the last evaluation
    n_window: int = 0  # iterations in `window`

    def add_losses(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.n_window += 1

    def take_mean_losses(self) -> dict[str, float]:
        """The mean of each loss since the last evaluation over all ranks; empties the window."""
        ranks = world_size()
        means = {k: v / (self.n_window * ranks) for k, v in sum_over_ranks(self.window).items()}
        self.window, self.n_window = {}, 0
        return means


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
               iteration: int, *, device: torch.device,
               sync: Callable[[Path], None]) -> Path | None:
    """Rank 0 writes the full training state at `iteration` (atomically) and calls `sync` on the
    file; every rank must call this (the RNG states and loss sums are gathered)."""
    rng = gather_over_ranks([torch.get_rng_state()])
    cuda_rng = gather_over_ranks([torch.cuda.get_rng_state(device)]) if device.type == "cuda" else []
    window_sums = sum_over_ranks(progress.window)
    if rank() != 0:
        return None
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "counts": progress.counts, "rng": rng, "cuda_rng": cuda_rng, "window": window_sums,
             "n_window": progress.n_window}

    def write(tmp: Path) -> None:
        # through a file of ours, closed however torch.save ends: a failed write (a full disk)
        # must not keep the partial file's space held by an open handle
        with open(tmp, "wb") as f:
            torch.save(state, f)

    return write_checkpoint(path, write, iteration, keep_previous=path.name == CHECKPOINT, sync=sync)


def usable_checkpoint(out_dir: Path, resume_from: Path | None = None, *,
                      say: Callable[[str], None] = lambda _s: None) -> Path | None:
    """The checkpoint to resume from: `resume_from` if given (Ray Train's copy, checked against
    the checksums beside it), else the newest of the trial's checkpoint.pt and checkpoint.prev.pt
    whose size and SHA-256 are those recorded when it was written. Each file passed over is named
    to `say`, with why; None: none is usable (the trial starts from iteration 0)."""
    candidates = [resume_from] if resume_from is not None else []
    candidates += [out_dir / CHECKPOINT, out_dir / PREVIOUS_CHECKPOINT]
    good: list[tuple[int, Path]] = []
    for path in candidates:
        check = check_checkpoint(path)
        if check.iteration is not None:
            good.append((check.iteration, path))
        elif check.problem is not None:
            say(f"checkpoint {path} is not used: {check.problem}")
    if not good:
        if any(p.is_file() for p in candidates):
            say(f"no usable checkpoint in {out_dir}: the trial starts again from iteration 0")
        return None
    iteration, path = max(good, key=lambda g: g[0])
    if path.name == PREVIOUS_CHECKPOINT:
        say(f"falling back to the previous checkpoint, {path} (iteration {iteration})")
    return path


def drop_previous(out_dir: Path, sync: Callable[[Path], None]) -> None:
    """Remove the fallback checkpoint of a finished trial (and its record), and `sync` both."""
    previous = out_dir / PREVIOUS_CHECKPOINT
    if previous.is_file():
        previous.unlink()
        sync(previous)
        write_checksums(out_dir, read_checksums(out_dir), sync)


def restore_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                  device: torch.device) -> Progress:
    """Load `path` into the model, the optimizer and this rank's RNG (a rank the checkpoint did
    not have keeps its fresh sampling seed); returns the progress."""
    state = load_state_file(path)
    me = rank()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # The loss sums since the last evaluation, summed over ranks: rank 0 carries them.
    window = {k: (v if me == 0 else 0.0) for k, v in state.get("window", {}).items()}
    if me < len(state["rng"]):
        torch.set_rng_state(state["rng"][me])
    cuda_rng = state.get("cuda_rng", [])
    if me < len(cuda_rng) and device.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng[me], device)
    return Progress(iteration=state["iteration"], counts=state["counts"], window=window,
                    n_window=int(state.get("n_window", 0)))


def checkpoint_bytes(cfg: StudyConfig) -> int:
    """Bytes of one trial checkpoint: the model's state (parameters and buffers) and SGD's
    momentum for every trained parameter, in fp32 (the model is built on the meta device: no
    memory, no data). Classes: the synthetic set's, or COCO's 80 for a COCO-format set."""
    classes = len(cfg.data.synthetic.categories) if cfg.data.source == "synthetic" else COCO_CLASSES
    with torch.device("meta"):
        model = build_detector(cfg, classes)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + momentum
