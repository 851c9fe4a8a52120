"""SWAG (Maddox et al., 2019; StarSSE paper, Appendix C): members drawn around a constant-lr walk from member 1.

Member 1 is the ×1 fine-tune. A step (not a member) continues it with the cycle recipe's lr and epochs on a
constant schedule and gathers the weights at the start and at the end of every epoch (App. C: 19 epochs,
20 models counting the fine-tuned one) into SWAG's moments: their mean, mean of squares and the
deviations of the last ``rank`` of them from the mean. Members 2..K are draws from
N(mean, scale · (diag(sq_mean − mean²) + D Dᵀ / (k − 1))), k the deviations kept, BatchNorm statistics
re-estimated. ``scale`` multiplies the covariance as in the SWAG repository's ``SWAG.sample(scale, cov=True)``,
the code the paper ran, so that App. C's grid [0.1 .. 1.2] means what it meant there.

Member 1 stays a member: the paper's local methods "train the first network and then sample other
ensemble members" around it, every method of the registry then shares member 1 (trained once, from the
cache), and ensembles of size k compare across methods at k − 1 further models each.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque

import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.methods._base import (BN_IMAGES, Bench, Made, MemberJob, MemberResult, Method, State, first_member, member_seed,
                                   recalibrated)
from enstune.methods._registry import register_maker, register_method
from enstune.settings import Setting

# SWAG's deviation matrix keeps the last 20 iterates (the repository's ``max_num_models``), all 20 of App. C.
RANK = 20


def flat_weights(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one vector (``parameters_to_vector``'s order)."""
    # reshape, not parameters_to_vector's view: during training a convolution's weight may be channels-last.
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class Moments:
    """SWAG's running moments of flat weight vectors: sums for mean and mean of squares, the last ``rank`` vectors."""

    def __init__(self, rank: int = RANK) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank=}")
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.last: deque[torch.Tensor] = deque(maxlen=rank)

    def add(self, theta: torch.Tensor) -> None:
        """Gather one iterate (any device; kept on the CPU, sums in float64 so that tiny variances survive)."""
        theta = theta.detach().to("cpu", torch.float64)
        self.total = theta.clone() if self.total is None else self.total.add_(theta)
        self.squares = theta.square() if self.squares is None else self.squares.add_(theta.square())
        self.last.append(theta.float())
        self.count += 1

    def extras(self) -> State:
        """``mean``, ``sq_mean`` (float64), ``deviations`` (k × P) of the last k iterates from the mean, ``count``."""
        if self.count == 0:
            raise ValueError("no iterate gathered")
        mean = self.total / self.count
        # From the final mean: with every kept iterate at hand, D Dᵀ/(k-1) is their sample covariance.
        deviations = torch.stack([(t.double() - mean).float() for t in self.last])
        return {"mean": mean, "sq_mean": self.squares / self.count, "deviations": deviations,
                "count": torch.tensor(self.count)}


def swag_sample(moments: State, scale: float, generator: torch.Generator) -> torch.Tensor:
    """A draw (float64, CPU) from N(mean, scale · (diag + D Dᵀ/(k−1))); scale 0 gives the mean."""
    mean, deviations = moments["mean"], moments["deviations"]
    variance = (moments["sq_mean"] - mean.square()).clamp_min(0.0)
    noise = variance.sqrt() * torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    k = len(deviations)
    if k > 1:  # one iterate has no spread to factor
        z = torch.randn(k, generator=generator, dtype=torch.float64)
        noise += (deviations.double().T @ z) / (k - 1) ** 0.5
    return mean + scale ** 0.5 * noise


@register_maker("swag-collect")
def collect(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """Train the job's recipe, gathering the start model and every epoch's end into SWAG's moments (option ``rank``)."""
    moments = Moments(int(job.option("rank", RANK)))
    moments.add(flat_weights(model))
    per_epoch = bench.epoch_steps(job.recipe)
    steps = itertools.count(1)

    def gather(net: nn.Module, _lr: float) -> None:
        if next(steps) % per_epoch == 0:  # the epoch's last step
            moments.add(flat_weights(net))

    stats = bench.train(model, job, after_step=gather)
    return Made(stats.epochs, moments.extras())


@register_maker("swag-sample")
@torch.no_grad()
def sample(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """Weights drawn from the parent's moments with option ``scale`` and the job's seed; BN re-estimated."""
    assert parent is not None, "a SWAG member starts from the step that gathered the moments"
    theta = swag_sample(parent.extras, float(job.option("scale", 1.0)), torch.Generator().manual_seed(job.seed))
    first = next(model.parameters())
    vector_to_parameters(theta.to(first.device, first.dtype), model.parameters())
    bench.recalibrate(model, int(job.option("bn_images", BN_IMAGES)))
    return Made(0)


@register_method
class SWAG(Method):
    name = "swag"
    description = ("member 1 with the ×1 recipe; members 2..K drawn from SWAG's Gaussian over the epochs of a "
                   "constant-lr continuation of it (cycle lr and epochs), at the trial's scale")
    shared_members = 1
    # The walk reads the cycle multipliers, the draws the scale; sampled members are no trained ones to regularize.
    reads = frozenset({"lr_mult", "epoch_mult", "scale"})
    options = {"rank": Setting(RANK, "iterates kept for the low-rank part of the covariance", low=1)}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        first = first_member(cfg)
        walk = dataclasses.replace(cfg.recipe.cycle(cfg.lr_mult, cfg.epoch_mult), schedule="constant")
        rank = cfg.option("rank", RANK)
        if rank < 1 or rank != int(rank):
            raise ConfigError(f"options.rank must be a whole number >= 1 (iterates kept), got {rank}")
        moments = MemberJob(2, walk, member_seed(cfg.seed, 2), parent=1, make="swag-collect",
                            options=(("rank", int(rank)),), member=False)
        return [first, moments] + [
            # From the step, not member 1: the parent's key is part of a member's, so each walk has its own draws.
            MemberJob(k, cfg.recipe, member_seed(cfg.seed, k), parent=2, make="swag-sample",
                      options=recalibrated((("scale", cfg.scale),)))
            for k in range(3, cfg.members + 2)]
