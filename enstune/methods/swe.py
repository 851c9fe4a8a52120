"""Stochastic Weight Ensembling (single-basin paper, Section 3 and Appendices B, C): snapshots of one run whose
learning rate stops decaying at a tenth of its peak.

Appendix C: "we apply the same linear warmup cosine decay schedule as for the other ensemble methods, but
stop decaying the learning rate at 0.01 [of a 0.1 peak] and hold it constant thereafter". Member 1 is that
run after the ×1 epochs T (the ×1 recipe on the ``swe`` schedule, which holds the lr at ``FLOOR`` of the peak
instead of annealing it to zero); the run goes on at the held lr, optimizer state and all, and member k is
its snapshot after another T × epoch_mult epochs (Table 5: T, the epochs of one model, so epoch_mult 1).
Member 1 is not the ×1 fine-tune the other methods share: it ends at the held lr, not annealed.
"""

from __future__ import annotations

import dataclasses

from enstune.config import TrialConfig
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, member_seed
from enstune.methods._registry import register_method
from enstune.recipe import Recipe
from enstune.schedules import cosine, register_schedule

# Where the decay stops, as a fraction of the peak lr: 0.01 of Appendix C's 0.1.
FLOOR = 0.1
# Every job of the one run keeps its optimizer state and starts from its parent's.
CARRY = (("carry_optimizer", True),)


@register_schedule
def swe(step: int, total: int, warmup: int) -> float:
    """SWE's decay: linear warm-up, then cosine decay from the peak, held at ``FLOOR`` of it once it gets there."""
    factor = cosine(step, total, warmup)
    return factor if step < warmup else max(factor, FLOOR)


def decaying(recipe: Recipe) -> Recipe:
    """The recipe of SWE's member 1: the ×1 recipe with its cosine decay held at ``FLOOR`` of the peak."""
    return dataclasses.replace(recipe, schedule="swe")


def held(cfg: TrialConfig) -> Recipe:
    """The recipe of SWE's members 2..K: the ×1 lr × ``FLOOR`` held for epochs × epoch_mult, no warm-up."""
    # Training goes on where member 1's decay stopped, so a warm-up would only dip the lr mid-run.
    return dataclasses.replace(cfg.recipe.cycle(FLOOR, cfg.epoch_mult), schedule="constant", warmup_epochs=0.0,
                               warmup_steps=0)


@register_method
class SWE(Method):
    name = "swe"
    description = ("one run of the ×1 recipe whose cosine decay stops at a tenth of the peak lr: member 1 after "
                   "the ×1 epochs, then a snapshot every epochs × epoch_mult at the held lr, optimizer state carried")
    # Member 1 is the same run's start in every trial of the method.
    shared_members = 1
    reads = LATER_MEMBER_PARAMS | {"epoch_mult"}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        first = MemberJob(1, decaying(cfg.recipe), member_seed(cfg.seed, 1), checkpoint=0, options=CARRY)
        return [first] + [MemberJob(k, held(cfg), member_seed(cfg.seed, k), parent=k - 1, options=CARRY)
                          for k in range(2, cfg.members + 1)]
