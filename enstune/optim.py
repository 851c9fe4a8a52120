"""Optimizers by name: a recipe's ``optimizer`` builds a torch optimizer over a model's trainable weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from enstune.recipe import Recipe
from enstune.registry import Registry

# make(param_groups, recipe) -> optimizer; each group may carry its own weight_decay
Make = Callable[[list[dict[str, Any]], Recipe], torch.optim.Optimizer]
OPTIMIZERS: Registry[Make] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict[str, Any]], r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict[str, Any]], r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)


def list_optimizers() -> list[str]:
    """Names of the registered optimizers."""
    return OPTIMIZERS.names()


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
    return OPTIMIZERS.get(recipe.optimizer)(groups, recipe)
