"""The closed sets of names a study chooses from (no torch import: the config reads these)."""

from __future__ import annotations

from typing import Literal, get_args

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d"]
Norm = Literal["gn", "syncbn", "bn", "frozen_bn"]
Init = Literal["scratch", "pretrained"]
Profile = Literal["paper", "tiny"]
Precision = Literal["auto", "fp32", "bf16"]

BACKBONES: tuple[str, ...] = get_args(Backbone)
NORMS: tuple[str, ...] = get_args(Norm)
PROFILES: tuple[str, ...] = get_args(Profile)
PRECISIONS: tuple[str, ...] = get_args(Precision)


def classifier_norm(detector_norm: str) -> str:
    """The norm to pre-train a backbone with so that a detector of `detector_norm` loads every
    tensor: GN for GN; BatchNorm (running statistics) for syncbn, bn and frozen_bn."""
    return "gn" if detector_norm == "gn" else "bn"
