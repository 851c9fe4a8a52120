"""Optimizers by name: a recipe's ``optimizer`` builds a torch optimizer over a model's trainable weights.

Each entry declares the settings it reads from the study's ``options`` beyond the recipe's shared fields
(lr, weight decay, and SGD's momentum and AdamW's betas, which the recipe has held from the start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from enstune.errors import ConfigError
from enstune.recipe import Recipe
from enstune.registry import Registry
from enstune.settings import Setting, away_from_defaults, resolved

# make(param_groups, recipe, settings) -> optimizer; each group may carry its own weight_decay
Make = Callable[[list[dict[str, Any]], Recipe, dict[str, Any]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Optimizer:
    """A registered optimizer: how it is made, and the settings it reads (``Recipe.optim`` holds their values)."""

    make: Make
    settings: dict[str, Setting] = field(default_factory=dict)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")


def register_optimizer(name: str, settings: dict[str, Setting] | None = None) -> Callable[[Make], Make]:
    """Register ``make(groups, recipe, settings)`` under ``name``, reading ``settings`` from the study's options."""

    def add(make: Make) -> Make:
        OPTIMIZERS.add(name, Optimizer(make, dict(settings or {})))
        return make

    return add


@register_optimizer("sgd", {"nesterov": Setting(False, "Nesterov momentum (needs momentum > 0)")})
def _sgd(groups: list[dict[str, Any]], r: Recipe, s: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=s["nesterov"])


@register_optimizer("adamw", {"amsgrad": Setting(False, "AMSGrad's running maximum of the second moment")})
def _adamw(groups: list[dict[str, Any]], r: Recipe, s: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay, amsgrad=s["amsgrad"])


def list_optimizers() -> list[str]:
    """Names of the registered optimizers."""
    return OPTIMIZERS.names()


def with_options(recipe: Recipe, options: dict[str, Any]) -> Recipe:
    """``recipe`` holding its optimizer's settings from ``options`` that are away from their defaults."""
    return dataclasses.replace(recipe, optim=away_from_defaults(options, OPTIMIZERS.get(recipe.optimizer).settings))


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """A fresh optimizer of ``recipe`` over the trainable parameters of ``model``.

    Without ``decay_norm_and_bias`` the 1-D parameters (norm weights, biases) form a group of
    their own without weight decay (timm's grouping, as the Swin and CLIP recipes ask).
    """
    if recipe.decay_norm_and_bias:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        from timm.optim import param_groups_weight_decay  # timm costs a second to import; most recipes never ask

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # e.g. Swin's position tables
        groups = param_groups_weight_decay(model, recipe.weight_decay, no_weight_decay_list=skip)
    entry = OPTIMIZERS.get(recipe.optimizer)
    return entry.make(groups, recipe, resolved(dict(recipe.optim), entry.settings))


def check_optimizer(recipe: Recipe) -> None:
    """Refuse, where a study is created, a recipe whose optimizer torch would refuse when a member starts."""
    try:
        make_optimizer(nn.Linear(1, 1), recipe)
    except ValueError as exc:  # e.g. Nesterov without momentum
        raise ConfigError(f"finetune.optimizer {recipe.optimizer}: {exc}") from None
