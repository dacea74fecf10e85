"""The closed sets of names a study chooses from (no torch import: the config reads these)."""

from __future__ import annotations

from typing import Literal, get_args

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d"]
Norm = Literal["gn", "syncbn", "bn", "frozen_bn"]
Init = Literal["scratch", "pretrained"]
Profile = Literal["paper", "tiny"]

BACKBONES: tuple[str, ...] = get_args(Backbone)
NORMS: tuple[str, ...] = get_args(Norm)
PROFILES: tuple[str, ...] = get_args(Profile)
