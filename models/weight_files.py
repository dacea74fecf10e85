"""Weight files, read safely, with their tensors under torchvision's ResNet names.

- `load_state_file`: every checkpoint and `.pt`/`.pth` file of the project, through
  `torch.load(weights_only=True)`.
- `read_backbone_state`: a pretrained backbone from
  - a `study pretrain` checkpoint, or any state dict in torchvision's or timm's ResNet naming
    (`conv1.weight`, `layer1.0.bn1.weight`, `layer1.0.downsample.1.bias`, ...; timm's GN ResNets,
    e.g. `resnet50_gn`, use the same names), whole or under `state_dict` / `model`, with a DDP
    `module.` prefix or as a whole detector's weights; `.safetensors` files too (timm's hub format);
  - Detectron's Caffe2 `.pkl` files (`R-50-GN.pkl`, `R-101-GN.pkl`: `conv1_w`, `conv1_gn_s`,
    `res2_0_branch2a_w`, `res2_0_branch1_gn_b`, ...), renamed as detectron2 does. detectron2 feeds
    these networks BGR images in 0-255 less ImageNet's mean x 255, with no std (PIXEL_STD
    [1, 1, 1]); torchvision's detector feeds RGB in 0-1 less the same mean, over ImageNet's std. The
    two inputs differ by a channel order and a scale per channel, so the first conv's input
    channels are reversed and multiplied by 255 x std: the network computes what it computes in
    detectron2, exactly. (Detectron trained them with a mean under one grey level away.)
  - a torchvision weights name ('ResNet50_Weights.IMAGENET1K_V2'), downloaded only then.
- `backbone_layout`: the names and shapes a source would load, without downloading anything (what
  the pre-flight compares with the detector).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")

# detectron2's input convention for Detectron's Caffe2 ImageNet models, and torchvision's
CAFFE2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
TORCHVISION_PIXEL_STD_RGB = (0.229, 0.224, 0.225)


class UnsafeCheckpoint(ValueError):
    """A checkpoint or weight file that holds pickled Python objects besides tensors."""


def load_state_file(path: str | Path) -> Any:
    """Every checkpoint and weight file of the project is read through this (or, for Detectron's
    `.pkl`, `read_detectron_pkl`): `torch.load` with `weights_only=True`, so only tensors, numbers,
    strings and containers come back. A file with pickled Python objects in it (which could run
    code while loading) is refused, named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise UnsafeCheckpoint(f"{path}: refused: it holds pickled Python objects, not only tensors "
                               f"(files are loaded with torch.load(weights_only=True); {reason})") from None


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; any other class is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
               ("_codecs", "encode")}  # how protocol 2 spells bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not a numpy array")
        return super().find_class(module, name)


def read_detectron_pkl(path: str | Path) -> dict[str, torch.Tensor]:
    """The blobs of a Detectron (Caffe2) `.pkl`: {'blobs': {name: array}} or {name: array},
    pickled by Python 2 (latin-1). Only numpy arrays are unpickled."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"{path}: refused: {e} (a Detectron .pkl holds numpy arrays only)") from None
    blobs = obj.get("blobs", obj) if isinstance(obj, dict) else None
    if not isinstance(blobs, dict):
        raise ValueError(f"{path}: not a Detectron weights file (expected a dict of arrays)")
    import numpy as np

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in blobs.items()
            if isinstance(v, np.ndarray) and not k.endswith("_momentum")}


_C2_STAGE = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|gn_s|gn_b|bn_s|bn_b)$")
_C2_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}


def detectron_to_torchvision(blobs: dict[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """Detectron's Caffe2 ResNet names -> torchvision's, conv1 converted from BGR 0-255 input
    (see the module docstring). The classifier (`pred_*`, `fc1000_*`) is dropped. A name this
    does not know, or a BatchNorm file (`*_bn_s`: Caffe2 folds BN into an affine, with the stride
    in the 1x1 conv), is refused."""
    state: dict[str, torch.Tensor] = {}
    unknown, bn = [], []
    for name, value in blobs.items():
        if name.startswith(("pred_", "fc1000_")):
            continue
        if "_bn_" in name:
            bn.append(name)
            continue
        stem = {"conv1_w": "conv1.weight", "conv1_gn_s": "bn1.weight", "conv1_gn_b": "bn1.bias"}.get(name)
        m = _C2_STAGE.match(name)
        if stem is not None:
            state[stem] = value
        elif m is not None:
            stage, block, branch, kind = m.groups()
            prefix = f"layer{int(stage) - 1}.{block}."
            if branch == "1":
                prefix += "downsample.0." if kind == "w" else "downsample.1."
            else:
                prefix += f"conv{_C2_BRANCH[branch]}." if kind == "w" else f"bn{_C2_BRANCH[branch]}."
            state[prefix + {"w": "weight", "gn_s": "weight", "gn_b": "bias"}[kind]] = value
        else:
            unknown.append(name)
    if bn:
        raise ValueError(f"{source}: a Caffe2 BatchNorm ResNet ({len(bn)} tensors like {bn[0]}): not supported "
                         "(its BN is folded into an affine and its stride sits in the 1x1 conv); use "
                         "Detectron's GN files (R-50-GN.pkl, R-101-GN.pkl) or a torchvision weights name")
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} Detectron tensor name(s) not in a ResNet: "
                         + ", ".join(sorted(unknown)[:8]))
    if "conv1.weight" in state:
        std = torch.tensor(TORCHVISION_PIXEL_STD_RGB) * 255.0 / torch.tensor(CAFFE2_PIXEL_STD_BGR[::-1])
        state["conv1.weight"] = state["conv1.weight"].flip(1) * std.view(1, 3, 1, 1)
    return state


def _torchvision_weights(name: str) -> Any:
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{name!r} is not a torchvision weights name ({e})") from None


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix == ".pkl":
        return detectron_to_torchvision(read_detectron_pkl(path), str(path)), {"format": "detectron"}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    obj = load_state_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("backbone"), dict):
        return obj["backbone"], dict(obj.get("meta", {}))  # a `study pretrain` checkpoint
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key], {}
    if isinstance(obj, dict):
        return obj, {}
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")


def _backbone_names(state: dict[str, Any]) -> dict[str, Any]:
    """Prefixes stripped (DDP's `module.`, a detector's `backbone.body.`), the classifier dropped."""
    if any(k.startswith(("backbone.body.", "module.backbone.body.")) for k in state):
        # a whole detector's weights: its backbone is what a pretrained arm takes
        state = {k: v for k, v in state.items() if ".body." in k and "backbone." in k}
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.body.", "body."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("fc."):  # the classifier's head never goes into a detector
            clean[key] = value
    return clean


def read_backbone_state(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(backbone state dict with torchvision ResNet key names, metadata) from a weights source."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        state, meta = _read_file(path)
    elif _WEIGHTS_NAME.match(text):
        state, meta = _torchvision_weights(text).get_state_dict(progress=True), {"torchvision_weights": text}
    else:
        raise FileNotFoundError(f"pretrained weights {text!r}: no such file, and not a torchvision "
                                "weights name like 'ResNet50_Weights.IMAGENET1K_V2'")
    return _backbone_names(state), meta


def backbone_layout(source: str | Path) -> dict[str, torch.Size]:
    """The backbone tensor names and shapes `read_backbone_state` would give, without downloading:
    a torchvision weights name stands for its architecture's state (every torchvision ImageNet
    ResNet has BatchNorm, so its `running_*` statistics are there)."""
    text = str(source)
    if not Path(text).expanduser().is_file() and _WEIGHTS_NAME.match(text):
        import torchvision.models as tvm
        from torchvision.models import get_model_weights, list_models

        weights = _torchvision_weights(text)
        arch = next((m for m in list_models(module=tvm) if get_model_weights(m) is type(weights)), None)
        if arch is None:
            raise ValueError(f"{text!r}: not the weights of a torchvision classification model")
        state = getattr(tvm, arch)(weights=None).state_dict()
        return {k: v.shape for k, v in _backbone_names(state).items()}
    state, _ = read_backbone_state(source)
    return {k: v.shape for k, v in state.items()}
