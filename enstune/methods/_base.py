"""A method turns a TrialConfig into a plan: the member jobs of one ensemble."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from enstune.config import TrialConfig
from enstune.recipe import Recipe


@dataclass(frozen=True)
class MemberJob:
    """Train member ``index`` from pre-trained ``checkpoint`` (new head) or from member ``parent``."""

    index: int
    recipe: Recipe
    seed: int
    checkpoint: int | None = None
    parent: int | None = None
    # An extra loss term (enstune.regularizers) weighted by alpha, reading earlier members ``refs``.
    regularizer: str = "none"
    alpha: float = 0.0
    refs: tuple[int, ...] = ()
    tap: str = ""  # the module whose output the regularizer compares ("": the head's input)
    subsample: int = 64  # RTD's rows per batch
    freeze: int = 0  # leading stages kept frozen (their BatchNorm in eval mode)

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.parent is None):
            raise ValueError(f"a job starts from a checkpoint or a parent member, got {self}")
        if self.parent is not None and not 1 <= self.parent < self.index:
            raise ValueError(f"member {self.index} cannot start from member {self.parent}")
        if any(not 1 <= r < self.index for r in self.refs):
            raise ValueError(f"member {self.index} cannot read members {self.refs}")


# What ``regularize`` hands to members 2..K of any method.
LATER_MEMBER_PARAMS = frozenset({"alpha", "freeze"})


def member_seed(seed: int, index: int) -> int:
    """The seed of member ``index`` of an ensemble with trial seed ``seed``."""
    return seed * 1000 + index


def regularize(jobs: list[MemberJob], cfg: TrialConfig) -> list[MemberJob]:
    """Members 2..K with the trial's regularizer, alpha and frozen stages; member 1 stays the plain ×1 fine-tune."""
    if cfg.freeze:
        jobs = [j if j.index == 1 else dataclasses.replace(j, freeze=cfg.freeze) for j in jobs]
    if cfg.regularizer == "none":
        return jobs
    from enstune.regularizers import get_regularizer

    needs = get_regularizer(cfg.regularizer).needs
    return [j if j.index == 1 else dataclasses.replace(
        j, regularizer=cfg.regularizer, alpha=cfg.alpha, tap=cfg.tap, subsample=cfg.subsample,
        refs=(1,) if needs == "first" else tuple(range(1, j.index))) for j in jobs]


def first_member(cfg: TrialConfig, checkpoint: int = 0, index: int = 1) -> MemberJob:
    """A plain ×1 fine-tune from a pre-trained checkpoint."""
    return MemberJob(index, cfg.recipe, member_seed(cfg.seed, index),
                     checkpoint=checkpoint)


class Method(ABC):
    """An ensembling method: a plan of member jobs for a trial."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Leading members whose results do not depend on the trial's parameters:
    # the pruner never judges a trial at these steps.
    shared_members: ClassVar[int] = 0
    # Search parameters the plan reads besides the ×1 recipe and the seed: an axis that no
    # method of a study reads would only repeat the study's trials.
    reads: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        """The member jobs, in member order."""
