"""Standard Snapshot Ensembles (Huang et al., 2017; StarSSE paper, Appendix D.1): every cycle alike."""

from __future__ import annotations

import dataclasses

from enstune.config import TrialConfig
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, member_seed
from enstune.methods._registry import register_method
from enstune.recipe import Recipe


def first_cycle(recipe: Recipe, lr_mult: float, epoch_mult: float) -> Recipe:
    """The first cycle: the cycle recipe, warmed up as the ×1 recipe warms up."""
    # The warm-up belongs to leaving the pre-trained checkpoint with a new random head, not to the cycle's
    # exploration: without it a cycle at lr × 32 would start from random head gradients on the pre-trained
    # trunk, the very harm that D.1 blames on the first cycle for reasons other than its hyperparameters.
    # Member 1 of SSE and StarSSE warms up the same way; a recipe without warm-up (the paper's ResNets) has
    # none here either.
    cycle = recipe.cycle(lr_mult, epoch_mult)
    return dataclasses.replace(cycle, warmup_epochs=recipe.warmup_epochs, warmup_steps=recipe.warmup_steps)


@register_method
class StandardSSE(Method):
    name = "standard-sse"
    description = ("every member a cycle of the cycle recipe: member 1 from pre-trained checkpoint 0 (with the ×1 "
                   "warm-up), member k from member k-1")
    shared_members = 0  # member 1 trains with the trial's cycle recipe
    reads = LATER_MEMBER_PARAMS | {"lr_mult", "epoch_mult"}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        cycle = cfg.recipe.cycle(cfg.lr_mult, cfg.epoch_mult)
        first = MemberJob(1, first_cycle(cfg.recipe, cfg.lr_mult, cfg.epoch_mult), member_seed(cfg.seed, 1),
                          checkpoint=0)
        return [first] + [MemberJob(k, cycle, member_seed(cfg.seed, k), parent=k - 1)
                          for k in range(2, cfg.members + 1)]
