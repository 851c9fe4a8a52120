"""A single fine-tuned model: the study that chooses the ×1 recipe."""

from __future__ import annotations

from enstune.config import TrialConfig
from enstune.methods._registry import register_method
from enstune.methods._base import MemberJob, Method, first_member


@register_method
class Finetune(Method):
    name = "finetune"
    description = "one fine-tune of pre-trained checkpoint 0 (members is ignored): the ×1 recipe search"

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return [first_member(cfg)]
