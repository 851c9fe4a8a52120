"""Regularizers: extra loss terms, weighted by ``alpha``, for members 2..K of any method.

A regularizer is built for one member from the states of earlier members (``refs``) and
returns a term ``term(model, x, y, features, logits)`` added to the cross-entropy; ``features`` are
the inputs of the classification head (the pooled embedding), so no second forward pass of
the member is needed. The head itself is never regularized.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from enstune.errors import ConfigError
from enstune.registry import Registry
from enstune.settings import Setting

State = dict[str, torch.Tensor]
# term(model, x, y, features, logits) -> the unweighted loss term
Term = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Context:
    """What a regularizer may use: earlier members' states by index, a model builder, the head prefix."""

    refs: dict[int, State]
    build: Callable[[State], nn.Module]
    head: str
    seed: int
    # The pre-trained weights the member descends from and their diagonal Fisher on the source
    # task, made on first call (only EWC asks).
    pretrained: Callable[[], tuple[State, State]] | None = None
    tap: str = ""  # the module whose output is compared ("" : the head's input)
    options: dict[str, Any] = field(default_factory=dict)  # the regularizer's settings (one left out: its default)


@dataclass(frozen=True)
class Regularizer:
    """A registered term: ``needs`` says which earlier members it reads (first, or all earlier); ``settings`` what it
    reads from the study's options."""

    name: str
    needs: str
    make: Callable[[Context], Term]
    settings: dict[str, Setting] = field(default_factory=dict)


REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


def register_regularizer(name: str, needs: str = "first", settings: dict[str, Setting] | None = None
                         ) -> Callable[[Callable[[Context], Term]], Callable]:
    """Register ``make(context) -> term`` under ``name``, reading ``settings`` from the study's options."""

    def add(make: Callable[[Context], Term]) -> Callable[[Context], Term]:
        REGULARIZERS.add(name, Regularizer(name, needs, make, dict(settings or {})))
        return make

    return add


def list_regularizers() -> list[str]:
    """Names of the registered regularizers."""
    return REGULARIZERS.names()


def get_regularizer(name: str) -> Regularizer:
    """The regularizer called ``name`` ("none" adds no term and is not registered)."""
    return REGULARIZERS.get(name)


def body(model: nn.Module, head: str, state: State | None = None) -> list[torch.Tensor]:
    """The model's parameters outside the head, or, with ``state``, the same entries of that state."""
    named = [(k, p) for k, p in model.named_parameters() if not k.startswith(head + ".")]
    return [p for _, p in named] if state is None else [state[k] for k, _ in named]


def _reference(ctx: Context, index: int, output: str = "features") -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Features (or logits) of earlier member ``index`` on a batch, without gradients, in the member's mode."""
    from enstune.training import tap_features

    ref = ctx.build(ctx.refs[index])
    ref.requires_grad_(False)
    captured: list[torch.Tensor] = []
    tap_features(ref, ctx.tap if output == "features" else "", captured)

    def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ref.train(model.training)
        captured.clear()
        with torch.no_grad():
            logits = ref(x)
        return captured[0] if output == "features" else logits

    return run


@register_regularizer("mse")
def _mse(ctx: Context) -> Term:
    first = _reference(ctx, 1)
    return lambda model, x, y, f, logits: F.mse_loss(f, first(model, x))


SUBSAMPLE = Setting(64, "rows of a batch RTD compares (its cost grows as their cube)", low=4, high=2**20)


@register_regularizer("rtd", settings={"subsample": SUBSAMPLE})
def _rtd(ctx: Context) -> Term:
    from enstune.regularizers.rtd import rtd

    first = _reference(ctx, 1)
    generator = torch.Generator().manual_seed(ctx.seed)
    subsample = ctx.options.get("subsample", SUBSAMPLE.default)
    return lambda model, x, y, f, logits: rtd(f.flatten(1), first(model, x).flatten(1), subsample, generator)


@register_regularizer("l2_ft")
def _l2_ft(ctx: Context) -> Term:
    anchor: list[torch.Tensor] | None = None

    def term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        nonlocal anchor
        weights = body(model, ctx.head)
        if anchor is None:
            anchor = [w.detach().to(p.device) for p, w in zip(weights, body(model, ctx.head, ctx.refs[1]))]
        return sum(((p - a) ** 2).sum() for p, a in zip(weights, anchor))

    return term


@register_regularizer("wo", needs="earlier")
def _wo(ctx: Context) -> Term:
    other = random.Random(ctx.seed).choice(sorted(ctx.refs))
    target: torch.Tensor | None = None

    def term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        nonlocal target
        # The weights as parameters, not ``.data``: the term must reach them with a gradient.
        mine = torch.cat([p.flatten() for p in body(model, ctx.head)])
        if target is None:
            target = torch.cat([w.flatten().float() for w in body(model, ctx.head, ctx.refs[other])]).to(mine.device)
        return F.cosine_similarity(mine, target, dim=0) ** 2

    return term


def _away(ctx: Context, wrong_only: bool) -> Term:
    other = _reference(ctx, random.Random(ctx.seed).choice(sorted(ctx.refs)), output="logits")

    def term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        target = other(model, x).float()
        keep = target.argmax(1) != y if wrong_only else torch.ones_like(y, dtype=torch.bool)
        if not keep.any():  # nothing selected: no push, and no 0/0
            return logits.sum() * 0.0
        # Minus the cross-entropy to the other member's predictions: minimising it pushes away.
        return -F.cross_entropy(logits[keep].float(), target[keep].softmax(1))

    return term


@register_regularizer("ce", needs="earlier")
def _ce(ctx: Context) -> Term:
    """StarSSE-CE (1), thesis section 6: away from a random earlier member's predictions, all samples."""
    return _away(ctx, wrong_only=False)


@register_regularizer("ce_wrong", needs="earlier")
def _ce_wrong(ctx: Context) -> Term:
    """StarSSE-CE (2): only on the samples that member gets wrong."""
    return _away(ctx, wrong_only=True)


@register_regularizer("ewc_pt", needs="first")
def _ewc_pt(ctx: Context) -> Term:
    """Fisher-weighted squared distance of the body's weights to the pre-trained ones."""
    if ctx.pretrained is None:
        raise ConfigError("regularizer ewc_pt needs the source task of the pre-trained checkpoints; "
                          "this task defines none")
    anchor: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        nonlocal anchor
        weights = body(model, ctx.head)
        if anchor is None:
            assert ctx.pretrained is not None
            state, fisher = ctx.pretrained()
            anchor = [(a.to(p.device), w.to(p.device)) for p, a, w in zip(
                weights, body(model, ctx.head, state), body(model, ctx.head, fisher))]
        return sum((w * (p - a) ** 2).sum() for p, (a, w) in zip(weights, anchor))

    return term
