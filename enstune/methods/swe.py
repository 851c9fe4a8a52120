"""Stochastic Weight Ensembling (single-basin paper, Section 3 and Appendix B): snapshots of one constant-lr run."""

from __future__ import annotations

import dataclasses

from enstune.config import TrialConfig
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, chain
from enstune.methods._registry import register_method
from enstune.recipe import Recipe


def constant_cycle(cfg: TrialConfig) -> Recipe:
    """The recipe of SWE's members 2..K: lr × lr_mult held constant for epochs × epoch_mult, no warm-up."""
    # Training goes on from the previous snapshot, so a warm-up would only dip the lr mid-run.
    return dataclasses.replace(cfg.recipe.cycle(cfg.lr_mult, cfg.epoch_mult), schedule="constant",
                               warmup_epochs=0.0, warmup_steps=0)


@register_method
class SWE(Method):
    name = "swe"
    description = ("member 1 with the ×1 recipe; training goes on at a constant lr (× lr_mult) and member k is "
                   "the snapshot after another epochs × epoch_mult, the optimizer's state carried along")
    shared_members = 1
    reads = LATER_MEMBER_PARAMS | {"lr_mult", "epoch_mult"}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        # Member 1 stays the plain ×1 fine-tune that other methods share, so it keeps no optimizer state:
        # member 2's momentum starts afresh, and from there on one run goes on through the snapshots.
        return chain(cfg, constant_cycle(cfg), (("carry_optimizer", True),))
