"""Fast Geometric Ensembling (Garipov et al., 2018; StarSSE paper, Appendix D.3): short triangular cycles."""

from __future__ import annotations

import dataclasses

from enstune.config import TrialConfig
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, chain
from enstune.methods._registry import register_method
from enstune.recipe import Recipe


def fge_cycle(recipe: Recipe, lr_mult: float, epoch_mult: float) -> Recipe:
    """One FGE member's job: the cycle recipe on the ``fge`` schedule (minimum, peak, minimum), no warm-up."""
    # The triangle's rise is the warm-up: a cycle that warms up too (cycle_warmup) would climb twice.
    return dataclasses.replace(recipe.cycle(lr_mult, epoch_mult), schedule="fge", warmup_epochs=0.0, warmup_steps=0)


@register_method
class FGE(Method):
    name = "fge"
    description = ("member 1 with the ×1 recipe; member k from member k-1 over one triangular cycle (lr × lr_mult "
                   "at its middle, 1% at its ends), momentum carried along the trajectory")
    shared_members = 1
    reads = LATER_MEMBER_PARAMS | {"lr_mult", "epoch_mult"}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        # Member 1 is the ×1 fine-tune every method shares and keeps no optimizer state, so member 2 starts
        # with fresh momentum (SGD's first step sets the buffer to its gradient) at the foot of its triangle;
        # from member 2 on each job hands its momentum to the next, as FGE's one continuing optimizer.
        return chain(cfg, fge_cycle(cfg.recipe, cfg.lr_mult, cfg.epoch_mult), (("carry_optimizer", True),))
