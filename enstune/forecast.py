"""What a partial ensemble can still become: bounds on the validation accuracy of its K members from its first m.

An ensemble grows by averaging, so its curve over ensemble size is not a learning curve: a diverse
trial starts weak and gains most. The members still to come can change the ensemble's answer only
on contested images, those whose margin between the ensemble's top two classes is within the
members' scatter (``EnsembleCurve``: below twice their standard deviation). The ensemble is the
members' mean, whose noise shrinks as 1/m; the part the remaining K - m members still average
away is 1/m - 1/K of one member's. Over N validation images of which a fraction C is contested,
the accuracy still to gain or lose is then a walk whose spread is

    spread = sqrt(C * (1/m - 1/K) / N)

and the bounds are the accuracy so far plus or minus ``z`` spreads. A finished ensemble (m = K) has
no spread: its bounds are its accuracy. One member scatters nowhere, so a trial has bounds only
from its second member on. ``benchmarks/half_cost.py`` prints, per seed, the largest growth that
an ensemble which ran to K members made from any step, in spreads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Spreads between a partial ensemble's accuracy and what its K members may reach. Chosen on the
# unpruned starsse-demo grids of seeds 0-3, where the largest growth from any step to K members was
# 3.55 spreads; on grids it was not chosen on it was at most 4.11 (starsse-demo seeds 4-7, sse-demo
# seeds 0-7) but up to 11.2 with a ×1 recipe of half the epochs, where a second member 15 points
# below member 1 drags the 2-member ensemble down and later members pull it back: the bound is a
# model of the walk, not a guarantee, and benchmarks/half_cost.py prints the growth per seed.
Z = 4.5


@dataclass(frozen=True)
class Bounds:
    """An ensemble's accuracy after ``members`` of ``size`` members and what the rest can make of it."""

    accuracy: float
    lower: float
    upper: float
    members: int
    size: int


def spread(contested: float, n: int, members: int, size: int) -> float:
    """Standard spread of the accuracy still to gain or lose from ``members`` to ``size`` members (see above)."""
    if n < 1 or members < 1:
        raise ValueError(f"need n >= 1 and members >= 1, got {n=} {members=}")
    rest = max(0.0, 1 / members - 1 / max(size, members))
    return math.sqrt(max(contested, 0.0) * rest / n)


def bounds(accuracy: float, contested: float, n: int, members: int, size: int, z: float = Z) -> Bounds:
    """The pessimistic and optimistic K-member accuracies of an ensemble of ``members`` (within [0, 1])."""
    s = z * spread(contested, n, members, size)
    return Bounds(accuracy, max(0.0, accuracy - s), min(1.0, accuracy + s), members, size)


def trial_bounds(attrs: dict[str, Any], accuracy: float | None = None, z: float = Z) -> Bounds | None:
    """A trial's bounds from its user attributes (``val_contested``, ``val_size``, ``planned_members``), if it has them.

    ``accuracy``: its ensemble's accuracy after as many members as ``val_contested`` has entries
    (a running trial reports it as its last intermediate value), else the last of ``val_ens_acc``.
    """
    contested, n = attrs.get("val_contested"), attrs.get("val_size")
    accs = attrs.get("val_ens_acc") or []
    if accuracy is None:
        accuracy = accs[-1] if accs and contested and len(accs) == len(contested) else None
    if accuracy is None or not contested or not n or len(contested) < 2:
        return None  # one member scatters nowhere: how diverse the next ones are is unknown
    size = int(attrs.get("planned_members") or len(contested))
    return bounds(accuracy, contested[-1], int(n), len(contested), size, z)
