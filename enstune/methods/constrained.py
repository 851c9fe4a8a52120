"""Constrained ensembles (single-basin paper, Section 3): K runs branched from one trunk at epoch t.

After a few epochs SGD is stable (Frankle et al., 2020): runs that go on from the same point with
other batch orders end in the same basin. The trunk is the first t epochs of the ×1 fine-tune of
checkpoint 0 (its seed, so the very run that other methods share as member 1), and each member
trains the rest of that schedule from it with its own batch order, the trunk's momentum carried.
"""

from __future__ import annotations

from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.methods._base import LATER_MEMBER_PARAMS, MemberJob, Method, member_seed
from enstune.methods._registry import register_method
from enstune.settings import Setting

# The branching point as a fraction of the ×1 epochs: Appendix C, Table 5 splits ResNet20 runs at
# t/T = 10/110 (CIFAR-10), 40/190 (CIFAR-100) and 30/130 (Tiny ImageNet).
SPLIT = 0.2
# Option t: where the members branch off the trunk, a fraction of the ×1 epochs (in (0, 1): ends refused as they plan).
SPLIT_SETTING = Setting(SPLIT, "where members branch off the trunk, a fraction of the ×1 epochs", low=0.0, high=1.0)


def split_epoch(cfg: TrialConfig) -> int:
    """The epoch t where the members branch off the trunk: option ``t`` × the ×1 epochs, within 1..T-1."""
    fraction, epochs = cfg.option("t", SPLIT), cfg.recipe.epochs
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"options.t is a fraction of the ×1 epochs in (0, 1), got {fraction}")
    if epochs < 2:
        raise ConfigError(f"{cfg.method} splits the ×1 run into a trunk and branches: it needs "
                          f"finetune.epochs >= 2, got {epochs}")
    return min(epochs - 1, max(1, round(fraction * epochs)))


def trunk_job(cfg: TrialConfig, index: int) -> MemberJob:
    """Epochs [0, t) of the ×1 fine-tune of checkpoint 0 with member 1's seed, its optimizer state kept; a step."""
    return MemberJob(index, cfg.recipe, member_seed(cfg.seed, 1), checkpoint=0, member=False,
                     options=(("carry_optimizer", True), ("span", (0, split_epoch(cfg)))))


def branch_span(cfg: TrialConfig) -> tuple[int, int]:
    """The epochs [t, T) of the ×1 schedule that a branch trains from the trunk."""
    return split_epoch(cfg), cfg.recipe.epochs


@register_method
class Constrained(Method):
    name = "constrained"
    description = ("a trunk trains the first t of the ×1 epochs from checkpoint 0; each of the K members "
                   "trains the remaining epochs from it with its own batch order (option t: a fraction)")
    # Member 1 reads no axis (the trial's regularizer and frozen stages reach members 2..K only);
    # it is not the ×1 fine-tune, but trials of one study with one seed share it all the same.
    shared_members = 1
    reads = LATER_MEMBER_PARAMS
    options = {"t": SPLIT_SETTING}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        branch = (("carry_optimizer", True), ("span", branch_span(cfg)))
        return [trunk_job(cfg, 1)] + [MemberJob(i, cfg.recipe, member_seed(cfg.seed, i), parent=1, options=branch)
                                      for i in range(2, cfg.members + 2)]
