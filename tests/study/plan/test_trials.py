"""The study's messages: one Size type with one label, Trials and Points that survive the Ray
boundary as plain data, and a lineage's trunk and branches."""

from __future__ import annotations

import json
import math

import pytest

from study.plan.trials import Point, Size, Trial, lineage


@pytest.mark.parametrize("size,label,name", [(Size("full"), "full", "nfull"), (Size(1000), "1000", "n1000"),
                                             (Size(None, 0.25), "frac0.25", "frac0.25")])
def test_a_size_has_one_label_and_parses_it_back(size: Size, label: str, name: str) -> None:
    assert size.label == label and size.name_part == name and Size.parse(label) == size


@pytest.mark.parametrize("columns,size", [(("full", None), Size("full")), ((1000.0, math.nan), Size(1000)),
                                          ((math.nan, 0.1), Size(None, 0.1)), ((None, 0.5), Size(None, 0.5))])
def test_a_size_is_read_back_from_a_metric_rows_columns(columns: tuple, size: Size) -> None:
    assert Size.of(*columns) == size  # as pandas gives them: NaN for missing, floats for counts


def test_a_size_has_exactly_one_of_count_and_fraction() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Size(1000, 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        Size(None, None)


def test_a_trial_names_itself_and_crosses_the_boundary_as_plain_data() -> None:
    trial = Trial(init="pretrained", schedule=3.0, base_lr=0.05, seed=1, size=Size(1000))
    assert trial.name() == "pretrained_3x_n1000_lr0.05_s1"
    assert Trial.from_dict(json.loads(json.dumps(trial.to_dict()))) == trial
    assert trial.columns() == {"init": "pretrained", "schedule": 3.0, "base_lr": 0.05, "seed": 1,
                               "train_images": 1000, "data_fraction": None}


def test_a_lineage_is_a_trunk_with_fork_points_and_branches_that_leave_there() -> None:
    trunk = Trial(init="scratch", schedule=3.0, base_lr=0.02, seed=0, size=Size(None, 0.1))
    head, branches = lineage(trunk, {1.0: 100, 2.0: 190})
    assert head == Point(trunk, 3.0, fork_iter=None, fork_at=(100, 190))
    assert [(b.trial.schedule, b.fork_iter, b.fork_at, b.trunk) for b in branches] == [
        (1.0, 100, (), trunk), (2.0, 190, (), trunk)]
    for point in (head, *branches):  # Tune's config and back
        assert Point.from_config(json.loads(json.dumps(point.to_config()))) == point
    assert branches[0].to_config() == {"init": "scratch", "size": "frac0.1", "seed": 0, "lr": 0.02,
                                       "trunk_schedule": 3.0, "schedule": 1.0, "fork_iter": 100, "fork_at": [],
                                       "start_at": 0, "stop_at": None}
    segment = Point(trunk, 3.0, fork_at=(190,), start_at=100, stop_at=190)  # a halving trunk's segment
    assert Point.from_config(json.loads(json.dumps(segment.to_config()))) == segment
    assert segment.tune_name() == "scratch_3x_frac0.1_lr0.02_s0_to190" and head.tune_name() == trunk.name()
    unforked, separate = lineage(trunk, {1.0: 100, 2.0: 190}, forking=False)
    assert unforked.fork_at == () and all(b.fork_iter is None for b in separate)
