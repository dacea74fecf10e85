"""What to run next for each claim a study left open: the shipped space that answers it, and what
it would take on the machine that ran this study, estimated from the run's own measured speed.

A claim is open when it is INCONCLUSIVE; `catches_up` also when it is CONTRADICTED, which says
that scratch had not caught up by this study's longest schedule, not that it never does. The
estimate splits the run's measured trials time (its concurrency included) into training, per
trial iteration, and evaluation, per evaluation (the seconds its metric rows record), and scales
each by the other space's (`study.plan.budget`, with forking; at its first look and at its last
for a space that adds seeds), and adds
the pre-training unless the other space pre-trains the same backbone the same way (then its
checkpoint is cached). Spaces of another model or image size are not priced: their iterations cost
something else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from study.analysis.claims import Claim
from study.config import StudyConfig, load_study
from study.layout import RUN_INFO, RunInfo
from study.plan.budget import evaluations_forked, plan_study
from study.plan.evidence import look_sizes, up_to_look

SHIPPED_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

# claim -> (the shipped space that settles it on the synthetic set, what it does differently)
ANSWERS = {
    "catches_up": ("catch_up.yaml", "the same model on two shape classes, up to 5x = 10,000 images per "
                                    "lineage, four seeds and up to six while a claim is open: where scratch catches up"),
    "faster_early": ("catch_up.yaml", "four to six seeds, and a wider early gap on two classes"),
    "small_data_gap": ("laptop.yaml", "a 30-image training set beside 3,000"),
}


@dataclasses.dataclass(frozen=True)
class NextStep:
    """One open claim and the study that answers it."""

    claim: str
    size: str
    space: str  # the shipped file, relative to the project (search_spaces/...)
    why: str
    iterations: int  # its trial iterations, with forking (at its first look, if it adds seeds)
    most: int  # ... and if every look is needed
    cost: str  # what it takes on this machine, or why that cannot be said

    def text(self) -> str:
        more = f" (up to {self.most:,} if every look is needed)" if self.most > self.iterations else ""
        return (f"Next for {self.claim} on {self.size} images: `study run {self.space}` ({self.why}): "
                f"{self.iterations:,} trial iterations{more}, {self.cost}.")


def _open(claim: Claim) -> bool:
    return claim.verdict == "INCONCLUSIVE" or (claim.claim == "catches_up" and claim.verdict == "CONTRADICTED")


def _same_model(a: StudyConfig, b: StudyConfig) -> bool:
    return (a.model, a.solver.ims_per_batch, a.data.synthetic.image_size, a.resources) == \
        (b.model, b.solver.ims_per_batch, b.data.synthetic.image_size, b.resources)


def next_steps(found: Sequence[Claim], cfg: StudyConfig | None, info: RunInfo | None,
               spaces: Path = SHIPPED_SPACES, eval_s: float = 0.0) -> list[NextStep]:
    """The next step for each open claim of `found` (once per claim and size) that a shipped space
    other than this study answers; priced with `info`'s trials seconds where it has them. `eval_s`
    is the seconds this run's evaluations took in all (the metric rows' `eval_s`): priced per
    evaluation, apart from the training, as the spaces evaluate at different rates."""
    if cfg is None:
        return []
    this = plan_study(cfg).iterations_forked
    trials_s = (info.phases_s.get("trials") if info is not None else None) or None
    slots = cfg.resources.max_concurrent_trials or 1
    evaluating = min(eval_s / slots, 0.9 * trials_s) if trials_s else 0.0  # wall seconds of evaluation
    per_eval = evaluating / evaluations_forked(cfg)
    out: list[NextStep] = []
    for claim in found:
        answer = ANSWERS.get(claim.claim)
        if not _open(claim) or answer is None or Path(answer[0]).stem == cfg.name:
            continue
        if any((s.claim, s.size) == (claim.claim, claim.size) for s in out):
            continue
        other = load_study(spaces / answer[0])
        last = len(look_sizes(other)) - 1  # its last look (0 for a space judged once)
        iterations = plan_study(other).iterations_forked
        most = plan_study(up_to_look(other, last)).iterations_forked
        if not _same_model(cfg, other):
            cost = "of another model or image size: price it with `study plan --s-per-iter`"
        elif trials_s is None or info is None:
            cost = (f"{iterations / this:.1f}x this study's (not priced: a single run's {RUN_INFO} holds the "
                    "time it is priced from)")
        else:
            cached = (other.pretrain, other.model.backbone) == (cfg.pretrain, cfg.model.backbone)
            per_iter = (trials_s - evaluating) / this
            pre = 0.0 if cached else info.phases_s.get("pretraining", 0.0)

            def minutes(look: int) -> float:
                at = up_to_look(other, look)
                return (per_iter * plan_study(at).iterations_forked + per_eval * evaluations_forked(at) + pre) / 60

            upto = f" ({minutes(last):.0f} with every look)" if most > iterations else ""
            cost = (f"{iterations / this:.1f}x this study's: about {minutes(0):.0f} min{upto} on this "
                    f"machine at this run's {per_iter:.3f} s of training per iteration and {per_eval:.1f} s per "
                    "evaluation" + (", its pre-training cached" if cached else ""))
        out.append(NextStep(claim=claim.claim, size=claim.size, space=f"{spaces.name}/{answer[0]}",
                            why=answer[1], iterations=iterations, most=most, cost=cost))
    return out
