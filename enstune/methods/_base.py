"""A method turns a TrialConfig into a plan: the member jobs of one ensemble.

A job's ``make`` names how its weights come about: ``train`` (the one training loop) or another
registered maker (a sample around a trained member, say), so that a plan says where members are
sampled rather than trained. A job with ``member`` off is a step other jobs read (a trunk to branch
from, a teacher, SWAG's moments), trained and cached like a member but not ensembled.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from enstune.config import StudySpec, TrialConfig
from enstune.recipe import Augmentation, Recipe
from enstune.settings import Setting, away_from_defaults

State = dict[str, torch.Tensor]


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
    reg_options: tuple[tuple[str, Any], ...] = ()  # the regularizer's settings away from their defaults, sorted
    freeze: int = 0  # leading stages kept frozen (their BatchNorm in eval mode)
    make: str = "train"  # the maker that builds the weights (enstune.methods.get_maker)
    options: tuple[tuple[str, Any], ...] = ()  # the maker's settings, sorted by name; part of the member key
    member: bool = True  # False: a step that later jobs read, not a member of the ensemble

    def option(self, name: str, default: Any = None) -> Any:
        """The maker setting ``name``, else ``default``."""
        return dict(self.options).get(name, default)

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.parent is None):
            raise ValueError(f"a job starts from a checkpoint or a parent member, got {self}")
        if self.parent is not None and not 1 <= self.parent < self.index:
            raise ValueError(f"member {self.index} cannot start from member {self.parent}")
        if any(not 1 <= r < self.index for r in self.refs):
            raise ValueError(f"member {self.index} cannot read members {self.refs}")
        if list(self.options) != sorted(self.options):
            raise ValueError(f"member {self.index}'s options must be sorted pairs, got {self.options}")


@dataclass
class MemberResult:
    """A finished job, trained here or found in the cache: its weights and what its maker keeps (momentum, moments),
    which are all the jobs that read it see, its predictions (CPU tensors) and what it cost."""

    key: str
    state: State
    val_probs: torch.Tensor
    test_probs: torch.Tensor
    epochs: int
    seconds: float
    cached: bool = False
    extras: State = field(default_factory=dict)


@dataclass(frozen=True)
class Made:
    """What a maker did to the model it was given: the epochs it trained and what later jobs may read."""

    epochs: int
    extras: State = field(default_factory=dict)


class Bench(Protocol):
    """What a maker works with: the job's device, the task's data and networks, the one training loop."""

    device: torch.device

    def split(self, name: str, augmentation: Augmentation = Augmentation()) -> Any:
        """Split ``name`` of the task bound to the device (``enstune.data.Split``)."""

    def model_from(self, state: State) -> nn.Module:
        """The task's network with weights ``state`` on the device."""

    def train(self, model: nn.Module, job: MemberJob, **options: Any) -> Any:
        """Train ``model`` as ``job`` says (``enstune.training.train``'s keywords override); its TrainStats."""

    def recalibrate(self, model: nn.Module, images: int) -> None:
        """Re-estimate ``model``'s BatchNorm statistics on at least ``images`` augmented training images, whole
        epochs (weights sampled, not trained)."""

    def epoch_steps(self, recipe: Recipe) -> int:
        """Optimizer steps in one epoch of the training loop under ``recipe`` (as many on every DDP rank)."""


# Makers that run the training loop (``register_maker(..., trains=True)``): a trial's regularizer and frozen stages reach them.
TRAINING_MAKERS: set[str] = set()

# make(bench, job, model, parent, refs) -> Made: turns ``model`` (the job's start, on the device) into the job's
# weights in place; ``parent`` is the parent job's result (None from a checkpoint), ``refs`` those the job reads.
Maker = Callable[[Bench, "MemberJob", nn.Module, "MemberResult | None", "dict[int, MemberResult]"], Made]


# Augmented training images whose BatchNorm statistics a sampled member (SWAG, KFAC-Laplace, SPRO) averages:
# whole epochs, one at least. One epoch of the demo's 99 images made member 1, re-estimated, lose 1.2-2.5
# points of validation accuracy; 10,000 (a hundred epochs there, one of CIFAR) keep it within 0.2
# (benchmarks/bn_recalibration.py). A sample job carries it as its option ``bn_images``.
BN_IMAGES = 10_000


def recalibrated(options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """A sample job's maker ``options`` with the BatchNorm re-estimation's ``bn_images``, sorted by name."""
    return tuple(sorted((*options, ("bn_images", BN_IMAGES))))


# What ``regularize`` hands to members 2..K of any method.
LATER_MEMBER_PARAMS = frozenset({"alpha", "freeze"})


def member_seed(seed: int, index: int) -> int:
    """The seed of member ``index`` of an ensemble with trial seed ``seed``."""
    return seed * 1000 + index


def regularize(jobs: list[MemberJob], cfg: TrialConfig) -> list[MemberJob]:
    """Trained members 2..K with the trial's regularizer, alpha and frozen stages; member 1 stays as planned."""
    members = [j.index for j in jobs if j.member]
    later = {i for i in members[1:] if next(j for j in jobs if j.index == i).make in TRAINING_MAKERS}
    if cfg.freeze:
        jobs = [dataclasses.replace(j, freeze=cfg.freeze) if j.index in later else j for j in jobs]
    if cfg.regularizer == "none":
        return jobs
    from enstune.regularizers import get_regularizer

    regularizer = get_regularizer(cfg.regularizer)
    needs, options = regularizer.needs, away_from_defaults(dict(cfg.options), regularizer.settings)
    return [dataclasses.replace(
        j, regularizer=cfg.regularizer, alpha=cfg.alpha, tap=cfg.tap, reg_options=options,
        refs=tuple(sorted(set(j.refs) | ({members[0]} if needs == "first" else {i for i in members if i < j.index}))))
        if j.index in later else j for j in jobs]


def first_member(cfg: TrialConfig, checkpoint: int = 0, index: int = 1) -> MemberJob:
    """A plain ×1 fine-tune from a pre-trained checkpoint."""
    return MemberJob(index, cfg.recipe, member_seed(cfg.seed, index),
                     checkpoint=checkpoint)


def chain(cfg: TrialConfig, recipe: Recipe, options: tuple[tuple[str, Any], ...] = ()) -> list[MemberJob]:
    """Member 1 the ×1 fine-tune, then member k from member k-1 with ``recipe`` (and the maker's ``options``)."""
    return [first_member(cfg)] + [MemberJob(k, recipe, member_seed(cfg.seed, k), parent=k - 1, options=options)
                                  for k in range(2, cfg.members + 1)]


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
    # The spec ``options`` the plan reads: their defaults and the values they take.
    options: ClassVar[dict[str, Setting]] = {}

    @abstractmethod
    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        """The member jobs, in member order."""

    def check(self, spec: StudySpec) -> None:
        """Refuse, where a study is created, a spec this method cannot run (a ConfigError saying why)."""
