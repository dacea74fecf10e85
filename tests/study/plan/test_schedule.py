from __future__ import annotations

import pytest

from study.config import SolverConfig, study_from_dict
from study.errors import ConfigError
from study.plan.schedule import evaluation_points, final_window, lr_at, rescale, schedule_for

PAPER = SolverConfig()  # 90k unit at 16 images, drops 60k and 20k before the end, warm-up 500


@pytest.mark.parametrize("k,max_iter,milestones", [
    (1, 90_000, (30_000, 70_000)),
    (2, 180_000, (120_000, 160_000)),
    (3, 270_000, (210_000, 250_000)),
    (6, 540_000, (480_000, 520_000)),
    (1.5, 135_000, (75_000, 115_000)),
])
def test_paper_milestones(k: float, max_iter: int, milestones: tuple[int, ...]) -> None:
    s = schedule_for(k, PAPER)
    assert (s.max_iter, s.milestones, s.warmup_iters) == (max_iter, milestones, 500)


def test_lr_values_at_exact_iterations() -> None:
    s = schedule_for(2, PAPER)
    its = [0, 250, 499, 500, 119_999, 120_000, 159_999, 160_000, 179_999]
    assert [lr_at(i, s, PAPER) for i in its] == pytest.approx(
        [0.02 / 3, 0.02 * (1 / 3 * 0.5 + 0.5), 0.02 * (1 / 3 * (1 / 500) + 499 / 500), 0.02,
         0.02, 0.002, 0.002, 0.0002, 0.0002])


def test_schedules_too_short_for_their_drops_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"0.5x ends at iteration 45000, so its first LR drop "
                                          r"\(60000 before the end\) falls at -15000"):
        schedule_for(0.5, PAPER)
    tiny = SolverConfig(unit_iters=300, drops_before_end=(200, 60), warmup_iters=50)
    assert schedule_for(0.5, SolverConfig(unit_iters=300, drops_before_end=(60, 20), warmup_iters=50)
                        ).milestones == (90, 130)
    with pytest.raises(ConfigError, match="not after the 50-iteration warm-up"):
        schedule_for(0.8, tiny)  # ends at 240, first drop at 40
    with pytest.raises(ConfigError) as err:
        study_from_dict({"name": "x", "grid": {"schedule": [1, 0.5]}})
    assert err.value.key == "grid.schedule" and "0.5x ends at iteration 45000" in err.value.message


def test_rescale_keeps_the_schedule_in_samples() -> None:
    small = rescale(PAPER, 8)
    assert (small.ims_per_batch, small.base_lr, small.unit_iters) == (8, 0.01, 180_000)
    assert (small.drops_before_end, small.warmup_iters, small.eval_period) == ((120_000, 40_000), 1000, 20_000)
    s, big = schedule_for(3, small), schedule_for(3, rescale(PAPER, 64))
    assert (s.max_iter, s.milestones) == (540_000, (420_000, 500_000))
    assert (big.max_iter, big.milestones) == (67_500, (52_500, 62_500))
    assert rescale(PAPER, 64).base_lr == pytest.approx(0.08)
    assert rescale(rescale(PAPER, 8), 16) == PAPER


def test_evaluation_points_add_the_final_window_counted_back_from_the_end() -> None:
    solver = SolverConfig(unit_iters=750, drops_before_end=(80, 25), warmup_iters=50, eval_period=100)
    three = schedule_for(1, solver)  # drops at 670 and 725
    assert evaluation_points(three, solver) == (100, 200, 300, 400, 500, 600, 700, 750)
    assert final_window(three, solver) == (750,)  # one evaluation after the last drop
    final = SolverConfig(**{**solver.__dict__, "final_eval_period": 12})
    assert evaluation_points(three, final) == (100, 200, 300, 400, 500, 600, 700, 726, 738, 750)
    assert final_window(three, final) == (726, 738, 750)  # never at the drop itself (725)
    coarse = SolverConfig(**{**solver.__dict__, "final_eval_period": 25})
    assert final_window(three, coarse) == (750,)  # 725 is the drop: its evaluation is before it
