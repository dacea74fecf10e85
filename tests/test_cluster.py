"""cluster.yaml passes the first half of `ray up` (prepare_config + validate_config), offline, and
agrees with what `study run --address auto` on the head expects."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


def _load() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_with_rays_launcher_code() -> None:
    from study.tune.driver import TRAIN_DRIVER

    cfg = prepare_config(_load())
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["resources"][TRAIN_DRIVER] > 0  # drivers only there
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is never a spot instance
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert sorted(t["resources"]["GPU"] for t in workers.values()) == [1, 8]  # a 1-GPU and an 8-GPU type
    for t in workers.values():
        assert TRAIN_DRIVER not in t["resources"] and t["min_workers"] == 0
        assert t["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert ".venv" in cfg["rsync_exclude"]  # never ship a multi-GB local environment


def test_the_cluster_installs_pinned_versions_of_what_the_tests_ran() -> None:
    import ray
    import torch
    import torchvision

    setup = " ".join(_load()["setup_commands"])
    base = lambda v: v.split("+")[0]  # noqa: E731
    assert f'"ray[default,train,tune]=={ray.__version__}"' in setup  # client and cluster must match
    assert f'"torch=={base(torch.__version__)}"' in setup
    assert f'"torchvision=={base(torchvision.__version__)}"' in setup
    mounted = [remote for remote, local in _load()["file_mounts"].items() if local == "."]
    assert mounted and f"pip install -q {mounted[0]}" in setup  # the checkout that `ray up` copies


def test_storage_and_dashboard_are_what_study_run_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    from study.cli import build_parser
    from study.layout import is_uri

    cfg = _load()
    exports = dict(re.findall(r"export (\w+)=(\S+)'", " ".join(cfg["setup_commands"])))
    storage = exports["STUDY_STORAGE"]
    assert is_uri(storage) and storage.startswith("s3://")  # shared by every node, not a node's disk
    monkeypatch.setenv("STUDY_STORAGE", storage)
    assert build_parser().parse_args(["run"]).storage == storage  # `study run` picks it up
    assert exports["RAY_AUTH_MODE"] == "token"
    for command in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in command
    assert "--dashboard-host=127.0.0.1" in cfg["head_start_ray_commands"][-1]  # only through the SSH tunnel
    assert "security_group" not in cfg["provider"]  # Ray's own: SSH and the cluster's own traffic
    assert "~/.ray/auth_token" in cfg["file_mounts"].values()


def test_a_typo_is_caught() -> None:
    bad = copy.deepcopy(_load())
    bad["available_node_types"]["gpu_1x"]["max_worker"] = bad["available_node_types"]["gpu_1x"].pop("max_workers")
    with pytest.raises(ValidationError, match="'max_worker' was unexpected"):
        validate_config(prepare_config(bad))


def test_every_node_type_has_the_image_and_a_profile_that_reaches_the_bucket() -> None:
    """One image everywhere (AWS's Deep Learning Base AMI with a current NVIDIA driver, not Ray's
    default Ubuntu 18.04 one); an instance profile on every node type, the head's able to start
    workers with theirs; the GPU nodes stop before Ray if the pinned torch sees no GPU."""
    cfg = prepare_config(_load())
    types = cfg["available_node_types"]
    images = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(images) == 1
    (image,) = images
    assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/")
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    head = profiles.pop(cfg["head_node_type"])
    assert set(profiles.values()) == {"rethinking-study-worker"} and head == "rethinking-study-head"
    docs = (REPO / "docs" / "cluster.md").read_text()
    for name in (head, "rethinking-study-worker"):  # the docs create what the yaml names
        assert f"--instance-profile-name {name}" in docs
    assert "iam:PassRole" in docs and "s3:PutObject" in docs and "ssm:GetParameters" in docs
    worker_setup = " ".join(cfg["worker_setup_commands"])
    assert "torch.cuda.is_available()" in worker_setup
    assert "STUDY_LOCAL_DIR" in " ".join(cfg["setup_commands"])  # the node's folder for pulled inputs
