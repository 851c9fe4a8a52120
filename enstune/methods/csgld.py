"""Cyclical SGLD (Zhang et al., 2020; StarSSE paper, Appendix D.2): cosine cycles ending in Langevin sampling.

Member 1 is the ×1 fine-tune. Each later cycle runs the cycle recipe's cosine schedule from the previous
cycle's last sample; its last ``SAMPLES_PER_CYCLE`` epochs are the sampling phase, where every optimizer
step is followed by Langevin noise, and the weights at the end of each of those epochs are members.

The cycles run plain SGD, as cSGLD's code does (ruqizhang/csgmcmc, experiments/cifar100_csgmcmc.py:
``optim.SGD(..., momentum=1-args.alpha)`` with ``--alpha`` 1, "1: SGLD"), at the cycle recipe's lr
(lr × lr_mult): the noise N(0, 2·lr·T/N) after each step then samples the posterior at temperature T.
Under the recipe's momentum β it would not: the drift grows by up to 1/(1 − β) while the noise stays, a
posterior up to 1 − β times as hot, ten times colder at 0.9. Without momentum a cycle at lr moves about
as far as one of momentum 0.9 at lr / 10, so a cSGLD grid reaches SSE's cycles at ten times their lr_mult.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from enstune.config import StudySpec, TrialConfig
from enstune.errors import ConfigError
from enstune.methods._base import (LATER_MEMBER_PARAMS, Bench, Made, MemberJob, MemberResult, Method, first_member,
                                   member_seed)
from enstune.methods._registry import flatten_optimizer, register_maker, register_method, unflatten_optimizer
from enstune.recipe import Recipe
from enstune.settings import Setting

# Samples per cycle: cSGLD's CIFAR code saves the last 3 epochs of every cycle (ruqizhang/csgmcmc,
# experiments/cifar100_csgmcmc.py: ``if (epoch%50)+1>47: # save 3 models per cycle``), as D.2 keeps.
SAMPLES_PER_CYCLE = 3
# The posterior's temperature T: cSGLD's default ``--temperature 1./50000`` ("1/dataset_size" of CIFAR),
# same file; with it the noise is ``(2 lr T / N)^0.5`` per step, N the training set's size.
TEMPERATURE = 1.0 / 50000


def langevin_noise(temperature: float, examples: int, generator: torch.Generator,
                   quiet: int = 0) -> Callable[[nn.Module, float], None]:
    """An ``after_step(model, lr)`` hook: N(0, 2·lr·T/N) added to every trainable weight, after ``quiet`` steps."""
    steps = itertools.count()

    @torch.no_grad()
    def add(model: nn.Module, lr: float) -> None:
        if next(steps) < quiet or temperature == 0:
            return
        std = math.sqrt(2.0 * lr * temperature / examples)
        for p in model.parameters():
            if p.requires_grad:  # frozen stages stay where they are
                p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std)

    return add


def sgld_cycle(recipe: Recipe, lr_mult: float, epoch_mult: float) -> Recipe:
    """cSGLD's cycle recipe: the cycle recipe (lr × lr_mult, epochs × epoch_mult) in plain SGD, momentum 0."""
    return dataclasses.replace(recipe.cycle(lr_mult, epoch_mult), momentum=0.0)


@register_maker("langevin", trains=True)
def langevin(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """Train ``span`` of the recipe's schedule, with Langevin noise (``temperature``) from epoch ``sampling_from``
    on; the optimizer starts from the parent's state (when it kept one) and is kept for the next sample."""
    first, last = job.option("span", (0, job.recipe.epochs))
    data = bench.split("train", job.recipe.augmentation)
    quiet = max(0, job.option("sampling_from", first) - first) * bench.epoch_steps(job.recipe)
    # Seeded by the job: a member's noise is part of its content, and every rank of a DDP member draws the same.
    generator = torch.Generator(bench.device).manual_seed(job.seed)
    noise = langevin_noise(job.option("temperature", TEMPERATURE), len(data), generator, quiet)
    start = unflatten_optimizer(parent.extras) if parent is not None else None
    stats = bench.train(model, job, span=(first, last), optimizer_state=start, after_step=noise)
    return Made(stats.epochs, flatten_optimizer(stats.optimizer_state))


@register_method
class CSGLD(Method):
    name = "csgld"
    description = ("member 1 with the ×1 recipe; then cosine cycles of the cycle recipe from the previous sample, "
                   "in plain SGD (csgmcmc's momentum 0), each giving the weights after its last 3 epochs, sampled "
                   "with Langevin noise")
    shared_members = 1
    reads = LATER_MEMBER_PARAMS | {"lr_mult", "epoch_mult"}
    options = {"temperature": Setting(TEMPERATURE, "the posterior's temperature (1/N: the paper's cold posterior)",
                                      low=0.0)}

    def check(self, spec: StudySpec) -> None:
        """Langevin dynamics here are SGD's: another optimizer has no SGLD step."""
        if spec.finetune.optimizer != "sgd":
            raise ConfigError(f"method csgld samples with SGD; finetune.optimizer is {spec.finetune.optimizer!r}")

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        cycle = sgld_cycle(cfg.recipe, cfg.lr_mult, cfg.epoch_mult)
        # A cycle shorter than 3 epochs gives one sample per epoch, all of it sampling phase: members stay
        # at epoch ends of the cycle's schedule, and more cycles make up the K members.
        samples = min(SAMPLES_PER_CYCLE, cycle.epochs)
        sampling = cycle.epochs - samples  # the epoch of the cycle where the noise starts
        temperature = cfg.option("temperature", TEMPERATURE)
        jobs = [first_member(cfg)]
        for k in range(2, cfg.members + 1):
            i = (k - 2) % samples  # the sample's place in its cycle; the first also runs the exploration
            span = (0 if i == 0 else sampling + i, sampling + i + 1)
            jobs.append(MemberJob(k, cycle, member_seed(cfg.seed, k), parent=k - 1, make="langevin",
                                  options=(("sampling_from", sampling), ("span", span),
                                           ("temperature", temperature))))
        return jobs
