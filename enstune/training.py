"""The one training loop: any member job, any device, per-step schedule, AMP on CUDA."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enstune.data._base import Augment, Split, batches, steps_per_epoch
from enstune.errors import DivergedError
from enstune.methods import Recipe
from enstune.schedules import get_schedule

# on_epoch(epoch, epochs, mean train loss)
EpochCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainStats:
    """What one training run cost and reached."""

    epochs: int
    steps: int
    seconds: float
    final_loss: float


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: nn.Module,
    data: Split,
    recipe: Recipe,
    *,
    seed: int,
    augment: Augment | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``data`` (already on the model's device) with a fresh optimizer."""
    start = time.perf_counter()
    device = data.x.device
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    per_epoch = steps_per_epoch(len(data), recipe.batch_size)
    total, warmup = recipe.epochs * per_epoch, round(recipe.warmup_epochs * per_epoch)
    factor = get_schedule(recipe.schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step, total, warmup))
    model.train()
    loss_sum = torch.zeros((), device=device)
    for epoch in range(recipe.epochs):
        loss_sum.zero_()
        for x, y in batches(data, recipe.batch_size, generator, augment):
            with _autocast(device):
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        # One host sync per epoch: the divergence check and the progress display share it.
        mean_loss = loss_sum.item() / per_epoch
        if not math.isfinite(mean_loss):
            raise DivergedError(f"loss became {mean_loss} in epoch {epoch + 1}")
        if on_epoch is not None:
            on_epoch(epoch + 1, recipe.epochs, mean_loss)
    return TrainStats(recipe.epochs, total, time.perf_counter() - start, mean_loss)


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities of ``model`` on ``split`` (float32, on the CPU)."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        with _autocast(split.x.device):
            logits = model(split.x[start : start + batch_size])
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out)
