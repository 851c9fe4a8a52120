"""Regimes of completed trials: more-local, optimal or semi-local (StarSSE paper, sections 4-5).

Rules, per method (trials of different methods are never compared):

- optimal: validation ensemble accuracy within ``z`` standard errors of the method's best, the
  standard error being that of a paired difference on the same validation images under the
  hypothesis of equal accuracy, sqrt(b + c) / n, with b, c the images only one of the two
  ensembles gets right (so the rule is McNemar's statistic (b - c) / sqrt(b + c) <= z).
  Ensembles from one checkpoint agree on most images, so this is much tighter than
  treating the two accuracies as independent; trials inside it cannot be told apart from the
  best on this validation set. A fixed ``band`` (accuracy) can replace it.
- semi-local: not optimal, and it left the pre-train basin: a barrier above ``barrier`` on
  train or validation (member 1 to member K, or the random pair), or members 2..K on average
  more than ``degradation`` below member 1 on validation (basin evidence, checked first); failing
  both, a trial more diverse than the optimum is semi-local by diversity alone, and says so.
- more-local: neither; its members are less diverse than the optimum's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from enstune.errors import EnstuneError
from enstune.evaluation import unpack_correct

LABELS = ("more-local", "optimal", "semi-local")


@dataclass(frozen=True)
class Thresholds:
    """Regime thresholds (accuracies as fractions); ``band`` None: ``z`` paired standard errors."""

    band: float | None = None
    z: float = 1.0
    barrier: float = 0.05
    degradation: float = 0.05

    def __post_init__(self) -> None:
        values = {"--band": self.band, "--z": self.z, "--barrier": self.barrier, "--degradation": self.degradation}
        for flag, v in values.items():
            if v is not None and not 0 <= v < math.inf:  # also refuses nan
                raise EnstuneError(f"{flag} must be a finite number >= 0, got {v}")


@dataclass(frozen=True)
class Regime:
    """One trial's label and the evidence next to it."""

    number: int
    method: str
    lr_mult: float | None
    epoch_mult: float | None
    val_ens_acc: float
    gain: float  # ensemble of K over member 1, validation
    degradation: float  # member 1 minus the mean of members 2..K, validation
    diversity: float | None
    barrier: float | None  # the largest of the trial's train/val barriers
    label: str
    reason: str
    # The rule that fired: accuracy (optimal); barrier or degradation (basin evidence: it left the
    # basin); diversity (semi-local only by diversity: no basin evidence); in-basin (more-local).
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def paired_se(a: list[bool], b: list[bool]) -> float:
    """Standard error of the accuracy difference of two classifiers on the same examples, if equally good."""
    discordant = sum(x != y for x, y in zip(a, b))
    return math.sqrt(discordant) / len(a)


def _barrier(attrs: dict[str, Any]) -> float | None:
    values = [attrs[k] for k in ("barrier_train", "barrier_val", "barrier_train_pair", "barrier_val_pair")
              if attrs.get(k) is not None]
    return max(values) if values else None


def classify(rows: list[dict[str, Any]], default_method: str, th: Thresholds = Thresholds()) -> list[Regime]:
    """Label the COMPLETE trials among ``rows`` (see ``enstune.study.trial_rows``)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["user_attrs"].get("val_ens_acc")]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        by_method.setdefault(r["params"].get("method", default_method), []).append(r)
    out: list[Regime] = []
    for method, group in by_method.items():
        best = max(group, key=lambda r: r["user_attrs"]["val_ens_acc"][-1])
        margins = {r["number"]: _margin(r, best, th) for r in group}
        top = best["user_attrs"]["val_ens_acc"][-1]
        optimum_div = max((r["user_attrs"].get("diversity") or 0.0) for r in group
                          if r["user_attrs"]["val_ens_acc"][-1] >= top - margins[r["number"]])
        out += [_label(r, method, top, margins[r["number"]], optimum_div, th) for r in group]
    return sorted(out, key=lambda g: g.number)


def _margin(r: dict[str, Any], best: dict[str, Any], th: Thresholds) -> float:
    """How far below the best ``r`` may be and still count as optimal."""
    if th.band is not None:
        return th.band
    mine, theirs = r["user_attrs"].get("val_correct"), best["user_attrs"].get("val_correct")
    if mine is None or theirs is None:  # trials recorded before per-image correctness was kept
        return 0.0
    return th.z * paired_se(unpack_correct(mine), unpack_correct(theirs))


def _label(r: dict[str, Any], method: str, best: float, margin: float, optimum_div: float, th: Thresholds) -> Regime:
    a = r["user_attrs"]
    acc, members = a["val_ens_acc"][-1], a.get("val_member_acc", [])
    degradation = members[0] - sum(members[1:]) / len(members[1:]) if len(members) > 1 else 0.0
    diversity, barrier = a.get("diversity"), _barrier(a)
    if acc >= best - margin:
        label, rule, reason = "optimal", "accuracy", f"{best - acc:.3f} below the best ({best:.3f}), within {margin:.3f}"
    elif barrier is not None and barrier > th.barrier:
        label, rule, reason = "semi-local", "barrier", f"left the basin: barrier {barrier:.3f} > {th.barrier}"
    elif degradation > th.degradation:
        label, rule, reason = ("semi-local", "degradation",
                               f"left the basin: members 2..K {degradation:.3f} below member 1 > {th.degradation}")
    elif diversity is not None and diversity > optimum_div:
        label, rule, reason = ("semi-local", "diversity", f"no basin evidence; diversity {diversity:.1f} above the "
                               f"optimum's {optimum_div:.1f}")
    else:
        label, rule, reason = "more-local", "in-basin", f"{best - acc:.3f} below the best, beyond {margin:.3f}; " \
                                                       f"in the basin, less diverse than the optimum"
    return Regime(r["number"], method, r["params"].get("lr_mult"), r["params"].get("epoch_mult"), acc,
                  acc - a["val_ens_acc"][0], degradation, diversity, barrier, label, reason, rule)


def regime_map(labelled: list[Regime], rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The paper's Figure 1 as data: {"lr_mult": [...], "epoch_mult": [...], "cells": {(lr, ep): text}}.

    A labelled trial reads "label accuracy"; one not labelled (running, pruned, failed) its state.
    """
    cells: dict[tuple[Any, Any], str] = {}
    for r in rows:
        if r["params"].get("method", method) == method and "lr_mult" in r["params"]:
            cells[(r["params"]["lr_mult"], r["params"].get("epoch_mult"))] = r["state"].lower()
    for g in labelled:
        if g.method == method:
            cells[(g.lr_mult, g.epoch_mult)] = f"{g.label} {g.val_ens_acc:.3f}"
    return {"lr_mult": sorted({k[0] for k in cells}), "epoch_mult": sorted({k[1] for k in cells if k[1] is not None}),
            "cells": cells}
