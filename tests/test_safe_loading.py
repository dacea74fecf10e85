"""Checkpoints and weight files are loaded with torch.load(weights_only=True), YAML with the safe
loader; a checkpoint with a pickled Python object in it is refused, by name."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from models.init import load_backbone
from models.weight_files import UnsafeCheckpoint, load_state_file
from study.config import StudyConfig
from study.layout import check_checkpoint, file_record
from study.plan.trials import Trial
from study.train.loop import train_trial
from tests.conftest import REPO


class Payload:
    """Stands for any object that unpickling would construct (and could run code for)."""

    def __init__(self) -> None:
        self.x = 1


def _sources() -> list[Path]:
    return sorted(p for d in ("study", "models", "bench") for p in (REPO / d).rglob("*.py"))


def test_every_load_goes_through_the_safe_loaders() -> None:
    calls = []
    for path in _sources():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "yaml", "pickle")):
                keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if isinstance(k.value, ast.Constant)}
                calls.append((str(path.relative_to(REPO)), node.func.value.id, keywords))
        assert not re.search(r"yaml\.(unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b", text), path
    # one torch.load in the project (load_state_file), weights only; no yaml.load; the one
    # pickle.load reads Tune's searcher state (Tune pickles searchers itself: trust your storage);
    # Detectron's .pkl goes through an unpickler that makes numpy arrays only (test_weight_files.py)
    assert calls == [("models/weight_files.py", "torch", {"map_location": "cpu", "weights_only": True}),
                     ("study/tune/searcher.py", "pickle", {})]
    unpicklers = [(str(path.relative_to(REPO)), node.name) for path in _sources()
                  for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
                  and any(ast.unparse(b) == "pickle.Unpickler" for b in node.bases)]
    assert unpicklers == [("models/weight_files.py", "_NumpyArraysOnly")]


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path: Path, tiny_cfg: StudyConfig,
                                                     tiny_trial: Trial) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "iteration": 0, "extra": Payload()}, evil)
    with pytest.raises(UnsafeCheckpoint, match=rf"{re.escape(str(evil))}: refused: it holds pickled Python objects"):
        load_state_file(evil)
    # as a trial's checkpoint: one with no size and checksum recorded is not even opened ...
    assert "no size or checksum was recorded" in check_checkpoint(evil).problem
    # ... and one whose record was forged with it is opened and refused
    (tmp_path / "checksums.json").write_text(json.dumps({"evil.pt": file_record(evil, 4)}))
    with pytest.raises(UnsafeCheckpoint):
        train_trial(tiny_cfg, tiny_trial, out_dir=tmp_path / "t", data_root=tmp_path, resume_from=evil)
    with pytest.raises(UnsafeCheckpoint):  # as pre-trained weights
        from models.mask_rcnn import build_mask_rcnn

        load_backbone(build_mask_rcnn(backbone="resnet18", norm="gn", num_classes=3, profile="tiny",
                                      min_size=64, max_size=64), evil)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": 3, "meta": {"name": "x"}}, plain)
    assert load_state_file(plain)["iteration"] == 3
