"""Per-step learning-rate schedules as multipliers of the peak learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable

from enstune.registry import Registry

# factor(step, total_steps, warmup_steps) -> multiplier of the peak lr
Schedule = Callable[[int, int, int], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")
# FGE's lowest learning rate, as a fraction of the peak (``triangular`` and ``fge``).
FGE_FLOOR = 0.01


def register_schedule(fn: Schedule) -> Schedule:
    """Register a schedule under its function name."""
    return SCHEDULES.add(fn.__name__, fn)


def list_schedules() -> list[str]:
    """Names of the registered schedules."""
    return SCHEDULES.names()


def get_schedule(name: str) -> Schedule:
    """The schedule called ``name``."""
    return SCHEDULES.get(name)


def _warmup(step: int, warmup: int) -> float | None:
    # Linear warm-up reaches the peak on the last warm-up step.
    return (step + 1) / warmup if step < warmup else None


@register_schedule
def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay from the peak to zero at ``total``."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


@register_schedule
def constant(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then the peak learning rate throughout."""
    w = _warmup(step, warmup)
    return 1.0 if w is None else w


@register_schedule
def triangular(step: int, total: int, warmup: int) -> float:
    """FGE's cycle: linear from the peak down to 1% at mid-cycle and back up."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    t = (step - warmup) / max(1, total - warmup)
    return 1.0 - (1.0 - FGE_FLOOR) * (1.0 - abs(2.0 * t - 1.0))


@register_schedule
def fge(step: int, total: int, warmup: int) -> float:
    """FGE's cycle as one member's job: linear from the minimum up to the peak at mid-cycle and back down.

    The last step runs at the minimum (1% of the peak), where FGE collects its model; consecutive jobs
    make one periodic triangle wave (a job's first step is one step up from its parent's last).
    """
    w = _warmup(step, warmup)
    if w is not None:
        return w
    t = min(1.0, (step - warmup + 1) / max(1, total - warmup))
    return FGE_FLOOR + (1.0 - FGE_FLOOR) * (1.0 - abs(2.0 * t - 1.0))
