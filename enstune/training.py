"""The one training loop: any member job, any device, per-step schedule, AMP on CUDA."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from enstune.data._base import Split, steps_per_epoch
from enstune.errors import DivergedError
from enstune.optim import make_optimizer
from enstune.recipe import Recipe
from enstune.schedules import get_schedule

# on_epoch(epoch, epochs, mean train loss)
EpochCallback = Callable[[int, int, float], None]
# extra(model, x, y, head input features, logits) -> a weighted loss term added to the cross-entropy
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    """What one training run cost and reached."""

    epochs: int
    steps: int
    seconds: float
    final_loss: float


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: nn.Module,
    data: Split,
    recipe: Recipe,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    extra: ExtraLoss | None = None,
    frozen: Sequence[nn.Module] = (),
    tap: str = "",
) -> TrainStats:
    """Train ``model`` in place on ``data`` (bound to the model's device) with a fresh optimizer.

    ``frozen`` modules keep their weights (left out of the optimizer) and, for BatchNorm, their
    running statistics (kept in eval mode). ``extra`` sees the output of module ``tap`` (default:
    the head's input, the pooled embedding) from the same forward pass.
    """
    for m in frozen:
        m.requires_grad_(False)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, recipe)
    per_epoch = steps_per_epoch(len(data), recipe.batch_size)
    total, warmup = recipe.epochs * per_epoch, recipe.warmup(per_epoch)
    factor = get_schedule(recipe.schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step, total, warmup))
    model.train()
    for m in frozen:
        m.eval()
    features: list[torch.Tensor] = []
    hook = tap_features(model, tap, features) if extra else None
    try:
        for epoch in range(recipe.epochs):
            mean_loss = _epoch(model, data, recipe, generator, opt, sched, extra, features)
            if not math.isfinite(mean_loss):
                raise DivergedError(f"loss became {mean_loss} in epoch {epoch + 1}")
            if on_epoch is not None:
                on_epoch(epoch + 1, recipe.epochs, mean_loss)
    finally:
        if hook is not None:
            hook.remove()
    return TrainStats(recipe.epochs, total, time.perf_counter() - start, mean_loss)


def tap_features(model: nn.Module, tap: str, into: list[torch.Tensor]) -> Any:
    """Collect the output of module ``tap`` (or, for "", the head's input) on every forward pass; the hook."""
    if tap:
        return model.get_submodule(tap).register_forward_hook(lambda _m, _i, out: into.append(out))
    return model.get_classifier().register_forward_hook(lambda _m, inputs, _o: into.append(inputs[0]))


def _epoch(model: nn.Module, data: Split, recipe: Recipe, generator: torch.Generator, opt: torch.optim.Optimizer,
           sched: Any, extra: ExtraLoss | None, features: list[torch.Tensor]) -> float:
    """One epoch; the mean loss (one host sync per epoch: the divergence check and the display share it)."""
    loss_sum: torch.Tensor | float = 0.0
    for x, y in data.batches(recipe.batch_size, generator):
        with autocast(x.device):
            features.clear()
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if extra is not None:
                loss = loss + extra(model, x, y, features[0], logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        sched.step()
        loss_sum = loss_sum + loss.detach()
    return float(loss_sum) / steps_per_epoch(len(data), recipe.batch_size)


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities of ``model`` on ``split`` (float32, on the CPU)."""
    model.eval()
    out = []
    for x, _ in split.batches(batch_size):
        with autocast(x.device):
            logits = model(x)
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out)
