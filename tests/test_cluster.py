"""cluster.yaml passes the first half of `ray up` (prepare_config + validate_config), offline."""

from __future__ import annotations

import copy

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


def _load() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_with_rays_launcher_code() -> None:
    cfg = prepare_config(_load())
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["GPU"] == 0  # drivers only on the head
    assert types[cfg["head_node_type"]]["resources"]["TRAIN_DRIVER"] > 0  # study/driver.py uses it
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values())
    assert ".venv" in cfg["rsync_exclude"]  # never ship a multi-GB local environment


def test_a_typo_is_caught() -> None:
    bad = copy.deepcopy(_load())
    bad["available_node_types"]["gpu_1x"]["max_worker"] = bad["available_node_types"]["gpu_1x"].pop("max_workers")
    with pytest.raises(ValidationError, match="'max_worker' was unexpected"):
        validate_config(prepare_config(bad))
