"""Snapshot ensembles from the first fine-tuned model: SSE (a chain) and StarSSE (a star, optionally diversified)."""

from __future__ import annotations

from enstune.config import TrialConfig
from enstune.methods._registry import register_method
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, chain, first_member, member_seed
from enstune.methods.deep_ensembles import DIVERSIFY_OPTIONS, diversify

CYCLE_PARAMS = LATER_MEMBER_PARAMS | {"lr_mult", "epoch_mult"}


def _cycles(cfg: TrialConfig, parent_of: dict[int, int]) -> list[MemberJob]:
    first = first_member(cfg)
    cycle = first.recipe.cycle(cfg.lr_mult, cfg.epoch_mult)
    return [first] + [
        MemberJob(k, cycle, member_seed(cfg.seed, k), parent=parent_of[k]) for k in range(2, cfg.members + 1)
    ]


@register_method
class SSE(Method):
    name = "sse"
    description = "member 1 with the ×1 recipe; member k from member k-1 with the cycle recipe"
    shared_members = 1
    reads = CYCLE_PARAMS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return chain(cfg, cfg.recipe.cycle(cfg.lr_mult, cfg.epoch_mult))


@register_method
class StarSSE(Method):
    name = "starsse"
    description = "member 1 with the ×1 recipe; members 2..K each from member 1 with the cycle recipe"
    shared_members = 1
    reads = CYCLE_PARAMS
    options = DIVERSIFY_OPTIONS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        # Appendix K: member 1 keeps the fixed ×1 recipe; members 2..K draw theirs around the cycle recipe.
        return diversify(_cycles(cfg, {k: 1 for k in range(2, cfg.members + 1)}), cfg, first=2)
