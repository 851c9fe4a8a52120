"""Local and Global Deep Ensembles: independent ×1 fine-tunes, optionally diversified (StarSSE paper, Appendix K)."""

from __future__ import annotations

import dataclasses

from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.methods._registry import register_method
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, first_member
from enstune.recipe import Diversity
from enstune.settings import Setting

# Appendix K's diversification as options: each member's lr, weight decay and epochs are its planned ones times a
# factor drawn log-uniformly from [low, high], and div_color = 1 draws its colour-jitter limits. The defaults
# change nothing: plans and member keys stay as without them.
DIVERSIFY_OPTIONS = {
    **{f"div_{name}_{end}": Setting(1.0, f"the {end} end of member factors on the {what} (> 0)", low=0.0)
       for name, what in (("lr", "lr"), ("wd", "weight decay"), ("epochs", "epochs")) for end in ("low", "high")},
    "div_color": Setting(0.0, "1: each member draws its colour-jitter limits; 0: off", choices=(0.0, 1.0))}


def diversity(cfg: TrialConfig) -> Diversity:
    """The trial's diversification from its options (a ConfigError names a bad one)."""
    ranges = {}
    for field, name in (("lr", "lr"), ("weight_decay", "wd"), ("epochs", "epochs")):
        low, high = (cfg.option(key, DIVERSIFY_OPTIONS[key].default) for key in (f"div_{name}_low", f"div_{name}_high"))
        if not 0 < low <= high:
            raise ConfigError(f"options.div_{name}_low and div_{name}_high must satisfy 0 < low <= high, "
                              f"got {low} and {high}")
        ranges[field] = (low, high)
    color = cfg.option("div_color", DIVERSIFY_OPTIONS["div_color"].default)
    if color not in (0, 1):
        raise ConfigError(f"options.div_color must be 0 (off) or 1 (on), got {color}")
    return Diversity(**ranges, color=bool(color))


def diversify(jobs: list[MemberJob], cfg: TrialConfig, first: int = 1) -> list[MemberJob]:
    """Jobs ``first``.. with recipes drawn for their seeds; the others (and all, without the options) as planned."""
    div = diversity(cfg)
    return [dataclasses.replace(j, recipe=div.apply(j.recipe, j.seed)) if j.index >= first else j for j in jobs]


@register_method
class LocalDE(Method):
    name = "local_de"
    description = "K fine-tunes of pre-trained checkpoint 0 with the ×1 recipe and different seeds"
    reads = LATER_MEMBER_PARAMS
    options = DIVERSIFY_OPTIONS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return diversify([first_member(cfg, checkpoint=0, index=k) for k in range(1, cfg.members + 1)], cfg)


@register_method
class GlobalDE(Method):
    name = "global_de"
    description = "K fine-tunes with the ×1 recipe, member k from pre-trained checkpoint k-1"
    reads = LATER_MEMBER_PARAMS
    options = DIVERSIFY_OPTIONS

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        return diversify([first_member(cfg, checkpoint=k - 1, index=k) for k in range(1, cfg.members + 1)], cfg)
