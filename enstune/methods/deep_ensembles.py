"""Local and Global Deep Ensembles: independent ×1 fine-tunes."""

from __future__ import annotations

from enstune.config import TrialConfig
from enstune.methods._registry import register_method
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, first_member


@register_method
class LocalDE(Method):
    name = "local_de"
    description = "K fine-tunes of pre-trained checkpoint 0 with the ×1 recipe and different seeds"
    reads = LATER_MEMBER_PARAMS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return [first_member(cfg, checkpoint=0, index=k) for k in range(1, cfg.members + 1)]


@register_method
class GlobalDE(Method):
    name = "global_de"
    description = "K fine-tunes with the ×1 recipe, member k from pre-trained checkpoint k-1"
    reads = LATER_MEMBER_PARAMS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return [first_member(cfg, checkpoint=k - 1, index=k) for k in range(1, cfg.members + 1)]
