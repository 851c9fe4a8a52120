"""Distilled ensembles (single-basin paper, Section 4, Eq. 1): a Global DE re-discovered in member 1's basin.

The teachers are a Global DE's members (member k from pre-trained checkpoint k-1, steps here).
Member 1 is the ×1 fine-tune of checkpoint 0, its own teacher. Every other member starts from
member 1's run at epoch t (the constrained ensembles' trunk) and trains the remaining epochs on
Eq. 1 towards its teacher: (1-β)·τ²·KL(σ(teacher/τ) ‖ σ(student/τ)) + β·cross-entropy.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.methods._base import Bench, Made, MemberJob, MemberResult, Method, first_member, member_seed
from enstune.methods._registry import register_maker, register_method, unflatten_optimizer
from enstune.methods.constrained import SPLIT_SETTING, branch_span, trunk_job
from enstune.settings import Setting

BETA = 0.2  # Section 4 and Appendix C, Table 5 (β = 1 is a constrained ensemble)
TAU = 3.0  # Appendix C, "Optimizers"


def distillation_term(logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, tau: float) -> torch.Tensor:
    """Eq. 1's distillation part (1-β)·τ²·KL(σ(teacher/τ) ‖ σ(logits/τ)), a batch mean; 0 on an empty batch."""
    student = F.log_softmax(logits.float() / tau, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
    kl = F.kl_div(student, teacher, reduction="sum", log_target=True)
    # The cross-entropy it is added to is a batch mean: so is this (max: an empty batch weighs nothing).
    return (1.0 - beta) * tau**2 * kl / max(1, len(logits))


@register_maker("distill")
def distill(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """Train ``model`` on Eq. 1 towards the member it reads (options beta, tau, span), from its parent's momentum."""
    if len(job.refs) != 1:
        raise ValueError(f"a distilled member reads one teacher, member {job.index} reads {job.refs}")
    beta, tau = float(job.option("beta", BETA)), float(job.option("tau", TAU))
    # Building the teacher draws a throwaway initialisation: the student's own random draws (dropout,
    # drop-path) must not move, so that β = 1 trains exactly the constrained ensemble's branch.
    with torch.random.fork_rng(devices=[]):
        teacher = bench.model_from(refs[job.refs[0]].state).eval().requires_grad_(False)

    def extra(_model: nn.Module, x: torch.Tensor, _y: torch.Tensor, _features: torch.Tensor,
              logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return distillation_term(logits, target, beta, tau)

    start = unflatten_optimizer(parent.extras) if parent is not None else None
    stats = bench.train(model, job, span=job.option("span"), optimizer_state=start, ce_weight=beta, extra=extra)
    return Made(stats.epochs)


@register_method
class Distilled(Method):
    name = "distilled"
    description = ("member 1: the ×1 fine-tune of checkpoint 0; member k: from member 1's run at epoch t, "
                   "distilled (Eq. 1, options beta, tau, t) from the ×1 fine-tune of checkpoint k-1")
    shared_members = 1
    options = {"beta": Setting(BETA, "the weight of the labels' cross-entropy in Eq. 1 (1: a constrained ensemble)",
                               low=0.0, high=1.0),
               "tau": Setting(TAU, "the distillation temperature (> 0)", low=0.0), "t": SPLIT_SETTING}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        k = cfg.members
        beta, tau = cfg.option("beta", BETA), cfg.option("tau", TAU)
        if not 0.0 <= beta <= 1.0 or not tau > 0.0:
            raise ConfigError(f"options.beta must be in [0, 1] and options.tau > 0, got beta={beta}, tau={tau}")
        if k == 1:
            return [first_member(cfg)]
        # Jobs 2..K are a Global DE's members 2..K (same start, recipe and seed: one cache entry for both).
        teachers = [dataclasses.replace(first_member(cfg, checkpoint=i - 1, index=i), member=False)
                    for i in range(2, k + 1)]
        options = (("beta", beta), ("span", branch_span(cfg)), ("tau", tau))
        students = [MemberJob(k + j, cfg.recipe, member_seed(cfg.seed, k + j), parent=k + 1, refs=(j,),
                              make="distill", options=options) for j in range(2, k + 1)]
        return [first_member(cfg), *teachers, trunk_job(cfg, k + 1), *students]
