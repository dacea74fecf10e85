"""Which seeds a study with `evidence` trains at each look."""

from __future__ import annotations

from study.config import study_from_dict
from study.plan.budget import format_plan, plan_study
from study.plan.evidence import look_sizes, study_seeds, up_to_look, wave

STUDY = {"name": "s", "solver": {"unit_iters": 10, "drops_before_end": [4, 2], "warmup_iters": 1},
         "grid": {"schedule": [1, 2], "train_images": [8], "seeds": [3, 0, 5]}, "lr": {"values": [0.02]}}


def test_seeds_are_numbered_on_from_the_largest_grid_seed_in_waves_of_step() -> None:
    cfg = study_from_dict({**STUDY, "evidence": {"max_seeds": 8, "step": 2}})
    assert study_seeds(cfg) == (3, 0, 5, 6, 7, 8, 9, 10)
    assert look_sizes(cfg) == (3, 5, 7, 8)  # the last wave is cut at max_seeds
    assert [wave(cfg, k) for k in range(4)] == [(3, 0, 5), (6, 7), (8, 9), (10,)]
    assert up_to_look(cfg, 1).grid.seeds == (3, 0, 5, 6, 7) and up_to_look(cfg, 1).evidence is None
    fixed = study_from_dict(STUDY)
    assert (study_seeds(fixed), look_sizes(fixed), wave(fixed, 0)) == ((3, 0, 5), (3,), (3, 0, 5))


def test_study_plan_prices_each_look() -> None:
    cfg = study_from_dict({**STUDY, "evidence": {"max_seeds": 5, "step": 1}})
    text = format_plan(cfg, plan_study(cfg), checkpoint_bytes=1, s_per_iter=0.5)
    per_seed = plan_study(study_from_dict({**STUDY, "grid": {**STUDY["grid"], "seeds": [0]}})).iterations_forked
    assert per_seed == 2 * (20 + 4)  # two arms, each a 2x trunk and the 1x branch from its first drop (6)
    lines = [line for line in text.splitlines() if line.startswith("  look")]
    assert lines == [
        f"  look 1: seeds 3, 0, 5 -> 3 seeds, 12 trials, {3 * per_seed} iterations, "
        f"{3 * per_seed * 0.5 / 3600:.2f} trial-hours in all; intervals at 99.2%",
        f"  look 2: seeds 6 -> 4 seeds, 16 trials, {4 * per_seed} iterations, "
        f"{4 * per_seed * 0.5 / 3600:.2f} trial-hours in all; intervals at 97.8%",
        f"  look 3: seeds 7 -> 5 seeds, 20 trials, {5 * per_seed} iterations, "
        f"{5 * per_seed * 0.5 / 3600:.2f} trial-hours in all; intervals at 95.8%"]
