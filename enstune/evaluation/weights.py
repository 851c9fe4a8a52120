"""Models made of members' weights: soups, points on segments, Dirichlet mixtures; BN recalibrated."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from enstune.data._base import Split
from enstune.evaluation import accuracy
from enstune.training import predict

State = dict[str, torch.Tensor]
# Builds a model on the evaluation device from a state dict.
ModelFactory = Callable[[State], nn.Module]
# A fresh, identical pass of training input batches for BN statistics on every call.
BatchSource = Callable[[], Iterable[torch.Tensor]]


def mix(states: Sequence[State], weights: Sequence[float]) -> State:
    """The weighted average of ``states`` (floating tensors; integer buffers from the first)."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"{len(states)} states and {len(weights)} weights")
    out: State = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(w * s[key].float() for w, s in zip(weights, states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Recompute BatchNorm running statistics of ``model`` over ``batches`` (``update_bn``); no-op without BN."""
    update_bn(batches, model)
    return model


class WeightSpace:
    """Evaluates weight-space combinations of members on splits, each with BN recomputed on ``bn_batches``."""

    def __init__(self, build: ModelFactory, bn_batches: BatchSource, on_model: Callable[[], None] | None = None) -> None:
        self.build, self.bn_batches, self.on_model = build, bn_batches, on_model

    def model(self, states: Sequence[State], weights: Sequence[float]) -> nn.Module:
        """The combination as a model, BN statistics recomputed (``on_model`` hears of each: they are the cost)."""
        model = recalibrate_bn(self.build(mix(states, weights)), self.bn_batches())
        if self.on_model is not None:
            self.on_model()
        return model

    def accuracy(self, states: Sequence[State], weights: Sequence[float], split: Split) -> float:
        """Accuracy of the combination on ``split``."""
        return accuracy(predict(self.model(states, weights), split), split.y)

    def segment(self, a: State, b: State, splits: Sequence[Split], points: int = 11) -> list[list[float]]:
        """Accuracy at ``points`` evenly spaced points from ``a`` to ``b``, one list per split."""
        out: list[list[float]] = [[] for _ in splits]
        for t in torch.linspace(0, 1, points).tolist():
            model = self.model([a, b], [1 - t, t])
            for acc, split in zip(out, splits):
                acc.append(accuracy(predict(model, split), split.y))
        return out

    def greedy_soup(self, states: Sequence[State], val_accs: Sequence[float], val: Split) -> tuple[list[int], float]:
        """Greedy soup (Wortsman et al., 2022) chosen on validation: (member indices, 0-based; its val acc)."""
        order = sorted(range(len(states)), key=lambda i: -val_accs[i])
        chosen, best = [order[0]], self.accuracy([states[order[0]]], [1.0], val)
        for i in order[1:]:
            trial = chosen + [i]
            acc = self.accuracy([states[j] for j in trial], [1 / len(trial)] * len(trial), val)
            if acc >= best:
                chosen, best = trial, acc
        return chosen, best

    def joint_connectivity(self, states: Sequence[State], split: Split, samples: int = 50, seed: int = 0) -> float:
        """q̄: mean over λ ~ Dir(1) of Acc(Σ λ_i θ_i) − Σ λ_i Acc(θ_i), in percent (single-basin paper)."""
        singles = [self.accuracy([s], [1.0], split) for s in states]
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(samples):
            # Dir(1) is a normalised vector of Exp(1) draws.
            lam = -torch.rand(len(states), generator=generator, dtype=torch.float64).log()
            lam = (lam / lam.sum()).tolist()
            total += self.accuracy(states, lam, split) - sum(w * a for w, a in zip(lam, singles))
        return 100.0 * total / samples


def barrier(accs: Sequence[float]) -> float:
    """Largest drop of ``accs`` (along a segment) below the straight line between its end points; >= 0."""
    n = len(accs)
    line = [accs[0] + (accs[-1] - accs[0]) * i / (n - 1) for i in range(n)]
    return max(0.0, max(l - a for l, a in zip(line, accs)))
