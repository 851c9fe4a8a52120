"""Regimes of a study's trials: more-local, optimal or semi-local (StarSSE paper, sections 4-5), each with a confidence.

Every trial that ran members of its own is labelled, per method (methods are never compared), from
validation statistics only; a trial that was pruned or stopped is labelled from what it has and
marked partial.

- optimal: cannot be told from the method's best. The best is picked out of many settings, so
  each other finished trial is tested against it with McNemar's paired test on the validation
  images only one of the two ensembles gets right, and Holm's correction over all those tests
  keeps the chance of calling any optimal setting worse below ``alpha``. A fixed ``band``
  (accuracy) can replace the test. A partial trial is optimal when the best its K members could
  reach (``enstune.forecast``) is not below the best's accuracy.
- semi-local: not optimal, and it left the pre-train basin: a barrier on the validation segment
  (member 1 to member K, or the seeded random pair) above ``barrier``, or members 2..K on average
  more than ``degradation`` below member 1 on validation. Diversity is shown as evidence, never
  decides a label.
- more-local: neither.

Each label's confidence is the share of bootstrap replicates of the validation set (Poisson
weights on its images, the per-image correctness the trials keep; barriers and degradation
drawn within their binomial standard errors) in which the same rules give the same label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.table import Table

from enstune.errors import EnstuneError
from enstune.evaluation import unpack_correct
from enstune.forecast import trial_bounds

LABELS = ("more-local", "optimal", "semi-local")
UNSURE = 0.8  # a label with a lower confidence is marked uncertain in the map and the pictures
CURVE_IMAGES = 1024  # validation images of a barrier when the trial does not say (the spec's default)


@dataclass(frozen=True)
class Thresholds:
    """Regime thresholds (accuracies as fractions); ``band`` None: Holm-corrected McNemar tests at ``alpha``."""

    band: float | None = None
    alpha: float = 0.05
    barrier: float = 0.05
    degradation: float = 0.05
    replicates: int = 1000

    def __post_init__(self) -> None:
        values = {"--band": self.band, "--barrier": self.barrier, "--degradation": self.degradation}
        for flag, v in values.items():
            if v is not None and not 0 <= v < math.inf:  # also refuses nan
                raise EnstuneError(f"{flag} must be a finite number >= 0, got {v}")
        if not 0 < self.alpha < 1:
            raise EnstuneError(f"--alpha must be in (0, 1), got {self.alpha}")
        if not 1 <= self.replicates <= 100_000:
            raise EnstuneError(f"--replicates must be in 1..100000, got {self.replicates}")

    def describe(self) -> str:
        """The rules in force, in one line."""
        optimal = (f"within {self.band} of the best" if self.band is not None else
                   f"not worse than the best by McNemar's paired test, Holm-corrected at alpha {self.alpha}")
        return (f"optimal: {optimal} (validation); semi-local: not optimal and left the basin (validation barrier > "
                f"{self.barrier} or degradation > {self.degradation}); confidence over {self.replicates} "
                f"bootstrap replicates of the validation set, below {UNSURE} marked '?'")


@dataclass(frozen=True)
class Regime:
    """One trial's label, its confidence and the evidence next to it."""

    number: int
    method: str
    lr_mult: float | None
    epoch_mult: float | None
    val_ens_acc: float
    gain: float  # ensemble over member 1, validation
    degradation: float  # member 1 minus the mean of members 2..m, validation
    diversity: float | None  # validation diversity (evidence only)
    barrier: float | None  # the larger of the validation barriers
    label: str
    reason: str
    # The rule that fired: accuracy or forecast (optimal); barrier or degradation (left the basin);
    # in-basin (more-local).
    rule: str = ""
    confidence: float = 1.0
    partial: bool = False  # labelled from the members it had (pruned, stopped or still running)
    members: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def paired_se(a: list[bool], b: list[bool]) -> float:
    """Standard error of the accuracy difference of two classifiers on the same examples, if equally good."""
    discordant = sum(x != y for x, y in zip(a, b))
    return math.sqrt(discordant) / len(a)


def holm_worse(b: np.ndarray, c: np.ndarray, alpha: float, among: np.ndarray | None = None) -> np.ndarray:
    """Which trials Holm's procedure finds worse than the best, from McNemar's one-sided tests.

    ``b[..., i]``: (weighted) images only trial i gets right; ``c[..., i]``: images only the best
    gets right; the best itself has b = c = 0. Only trials in ``among`` (default: all) are tested
    and counted. Leading axes are replicates.
    """
    from scipy.stats import norm

    among = np.ones(b.shape[-1], dtype=bool) if among is None else among
    n = b + c
    z = np.where(n > 0, (c - b) / np.sqrt(np.where(n > 0, n, 1)), 0.0)
    p = np.where(among, norm.sf(z), 1.0)
    tests = int(among.sum()) - 1  # every tested trial but the best
    if tests < 1:
        return np.zeros(p.shape, dtype=bool)
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    level = alpha / np.maximum(tests - np.arange(p.shape[-1]), 1)
    # Step down: reject the smallest p-values while each clears its level.
    passed = np.cumprod(ranked <= level, axis=-1).astype(bool)
    worse = np.zeros_like(passed)
    np.put_along_axis(worse, order, passed, axis=-1)
    return worse & (n > 0) & among


def _evidence(r: dict[str, Any], size: int | None) -> dict[str, Any] | None:
    """What a trial's attributes say, or None when it has no member of its own to judge."""
    a = r["user_attrs"]
    accs, members = a.get("val_ens_acc") or [], a.get("val_member_acc") or []
    if len(accs) < 2 or not a.get("val_correct"):
        return None
    size = int(a.get("planned_members") or size or len(accs))
    partial = r["state"] != "COMPLETE" or len(accs) < size
    # A trial recorded before its contested images were kept is bounded as if every image were contested.
    bound = trial_bounds({"val_contested": [1.0] * len(accs), **a, "planned_members": size}) if partial else None
    barriers = [a[k] for k in ("barrier_val", "barrier_val_pair") if a.get(k) is not None]
    return {"acc": accs[-1], "gain": accs[-1] - accs[0], "members": members,
            "degradation": members[0] - sum(members[1:]) / len(members[1:]) if len(members) > 1 else 0.0,
            "diversity": a.get("val_diversity"), "barrier": max(barriers) if barriers else None,
            "correct": np.array(unpack_correct(a["val_correct"]), dtype=bool), "partial": partial,
            "upper": bound.upper if bound is not None else (1.0 if partial else accs[-1]),
            "curve": int(a.get("curve_images") or min(CURVE_IMAGES, int(a.get("val_size") or CURVE_IMAGES)))}


def classify(rows: list[dict[str, Any]], default_method: str, th: Thresholds = Thresholds(),
             members: int | None = None) -> list[Regime]:
    """Label every trial among ``rows`` (see ``enstune.study.trial_rows``) that ran members of its own.

    ``members``: the study's ensemble size, for trials that did not record the size they planned.
    """
    by_method: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r in rows:
        if (ev := _evidence(r, members)) is not None:
            by_method.setdefault(r["params"].get("method", default_method), []).append((r, ev))
    out: list[Regime] = []
    for method, group in by_method.items():
        sizes = {len(ev["correct"]) for _, ev in group}
        if len(sizes) > 1:
            raise EnstuneError(f"trials of {method} were validated on different sets ({sorted(sizes)} images)")
        out += _classify_method(method, group, th)
    return sorted(out, key=lambda g: g.number)


def _labels(acc: np.ndarray, b: np.ndarray, c: np.ndarray, upper_gain: np.ndarray, finished: np.ndarray,
            barrier: np.ndarray, degradation: np.ndarray, th: Thresholds) -> np.ndarray:
    """Label indices (into LABELS) of every trial, for every replicate (leading axes)."""
    judged = finished if finished.any() else np.ones_like(finished)  # while none has finished: the partial ones
    best = np.where(judged, acc, -np.inf).max(axis=-1, keepdims=True)
    if th.band is not None:
        optimal = finished & (acc >= best - th.band - 1e-12)
    else:
        optimal = finished & ~holm_worse(b, c, th.alpha, among=finished)
    optimal |= ~finished & (acc + upper_gain >= best - 1e-12)
    left = (barrier > th.barrier) | (degradation > th.degradation)
    return np.where(optimal, 1, np.where(left, 2, 0))


def _classify_method(method: str, group: list[tuple[dict[str, Any], dict[str, Any]]], th: Thresholds) -> list[Regime]:
    evs = [ev for _, ev in group]
    correct = np.stack([ev["correct"] for ev in evs]).astype(np.float64)  # trials x images
    n = correct.shape[1]
    finished = np.array([not ev["partial"] for ev in evs])
    upper_gain = np.array([ev["upper"] - ev["acc"] for ev in evs])
    barrier = np.array([ev["barrier"] if ev["barrier"] is not None else -np.inf for ev in evs])
    degradation = np.array([ev["degradation"] for ev in evs])

    def tests(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accuracies and McNemar counts against the best finished trial, under image ``weights`` (replicates x n)."""
        acc = weights @ correct.T / weights.sum(axis=1, keepdims=True)
        best = np.where(finished if finished.any() else True, acc, -np.inf).argmax(axis=1)
        right = correct[best]  # replicates x images: what each replicate's best gets right
        b = np.einsum("ri,ti->rt", weights * (1 - right), correct)
        c = np.einsum("ri,ti->rt", weights * right, 1 - correct)
        return acc, b, c

    acc, b, c = tests(np.ones((1, n)))
    observed = _labels(acc, b, c, upper_gain, finished, barrier, degradation, th)[0]
    rng = np.random.default_rng(0)
    agree = np.zeros(len(evs))
    for start in range(0, th.replicates, 100):  # in chunks: replicates x images weights stay small
        weights = rng.poisson(1.0, size=(min(100, th.replicates - start), n)).astype(np.float64)
        acc_r, b_r, c_r = tests(weights)
        bar_r = barrier + rng.standard_normal(acc_r.shape) * _barrier_se(evs)
        deg_r = degradation + rng.standard_normal(acc_r.shape) * _degradation_se(evs, n)
        agree += (_labels(acc_r, b_r, c_r, upper_gain, finished, bar_r, deg_r, th) == observed).sum(axis=0)
    confidence = agree / th.replicates
    best = max((ev["acc"] for ev in evs if not ev["partial"]), default=max(ev["acc"] for ev in evs))
    return [_regime(r, ev, method, LABELS[int(lab)], float(conf), best, th)
            for (r, ev), lab, conf in zip(group, observed, confidence)]


def _barrier_se(evs: list[dict[str, Any]]) -> np.ndarray:
    """Binomial standard error of a barrier: the difference of two accuracies on the segment's images."""
    return np.array([math.sqrt(2 * ev["acc"] * (1 - ev["acc"]) / ev["curve"]) for ev in evs])


def _degradation_se(evs: list[dict[str, Any]], n: int) -> np.ndarray:
    """Standard error of member 1 minus the mean of the later members, as if their errors were independent."""
    out = []
    for ev in evs:
        m = ev["members"]
        if len(m) < 2:
            out.append(0.0)
            continue
        later = sum(m[1:]) / len(m[1:])
        out.append(math.sqrt(m[0] * (1 - m[0]) / n + later * (1 - later) / (n * len(m[1:]))))
    return np.array(out)


def _regime(r: dict[str, Any], ev: dict[str, Any], method: str, label: str, confidence: float, best: float,
            th: Thresholds) -> Regime:
    acc, barrier, degradation = ev["acc"], ev["barrier"], ev["degradation"]
    if label == "optimal":
        rule = "forecast" if ev["partial"] else "accuracy"
        reason = (f"its {len(ev['members'])} members could still reach {ev['upper']:.3f} >= the best {best:.3f}"
                  if ev["partial"] else f"{best - acc:.3f} below the best ({best:.3f}), not told apart from it")
    elif label == "semi-local":
        if barrier is not None and barrier > th.barrier:
            rule, reason = "barrier", f"left the basin: validation barrier {barrier:.3f} > {th.barrier}"
        else:
            later = "member 2" if len(ev["members"]) == 2 else f"members 2..{len(ev['members'])}"
            rule, reason = "degradation", f"left the basin: {later} {degradation:.3f} below member 1 > {th.degradation}"
    else:
        rule = "in-basin"
        reason = (f"at most {ev['upper']:.3f} with all its members, below the best {best:.3f}" if ev["partial"] else
                  f"{best - acc:.3f} below the best, worse by the paired test" if th.band is None else
                  f"{best - acc:.3f} below the best, beyond {th.band}") + "; no sign of leaving the basin"
    return Regime(r["number"], method, r["params"].get("lr_mult"), r["params"].get("epoch_mult"), acc, ev["gain"],
                  degradation, ev["diversity"], barrier, label, reason, rule, round(confidence, 3), ev["partial"],
                  len(ev["members"]))


def cell_text(g: Regime) -> str:
    """A regime map cell: the label (``?`` when uncertain, ``*`` when partial), accuracy and confidence."""
    marks = ("?" if g.confidence < UNSURE else "") + ("*" if g.partial else "")
    return f"{g.label}{marks} {g.val_ens_acc:.3f} ({g.confidence:.2f})"


def regime_map(labelled: list[Regime], rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The paper's Figure 1 as data: {"lr_mult": [...], "epoch_mult": [...], "cells": {(lr, ep): text}}.

    A labelled trial reads its ``cell_text``; a setting with no member of its own yet, its state.
    """
    cells: dict[tuple[Any, Any], str] = {}
    for r in rows:
        if r["params"].get("method", method) == method and "lr_mult" in r["params"]:
            cells.setdefault((r["params"]["lr_mult"], r["params"].get("epoch_mult")), r["state"].lower())
    for g in labelled:
        if g.method == method:
            cells[(g.lr_mult, g.epoch_mult)] = cell_text(g)
    return {"lr_mult": sorted({k[0] for k in cells}), "epoch_mult": sorted({k[1] for k in cells if k[1] is not None}),
            "cells": cells}


def study_dict(name: str, th: Thresholds, labelled: list[Regime]) -> dict[str, Any]:
    """Study ``name``'s labelled trials with the thresholds and rules in force, as JSON-serialisable data."""
    return {"study": name, "thresholds": th.__dict__, "rules": th.describe(), "trials": [g.to_dict() for g in labelled]}


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def trials_table(labelled: list[Regime], name: str) -> Table:
    """Study ``name``'s labelled trials, each with its evidence, as a rich table."""
    table = Table("#", "method", "lr_mult", "epoch_mult", "regime", "conf.", "val ens", "gain", "degr.", "val div.",
                  "barrier", "why", title=f"regimes of {name} (* partial: labelled from the members it had)")
    for g in labelled:
        table.add_row(str(g.number), g.method, str(g.lr_mult), str(g.epoch_mult), g.label + ("*" if g.partial else ""),
                      f"{g.confidence:.2f}", f"{g.val_ens_acc:.3f}", f"{g.gain:+.3f}", f"{g.degradation:+.3f}",
                      _fmt(g.diversity, ".1f"), _fmt(g.barrier, ".3f"), g.reason)
    return table


def map_table(grid: dict[str, Any], method: str) -> Table:
    """A regime map (``regime_map``) as a rich table."""
    table = Table("lr_mult \\ epoch_mult", *map(str, grid["epoch_mult"]), title=f"regime map ({method})")
    for lr in grid["lr_mult"]:
        table.add_row(str(lr), *[grid["cells"].get((lr, ep), "") for ep in grid["epoch_mult"]])
    return table


def study_tables(name: str, labelled: list[Regime], rows: list[dict[str, Any]]) -> list[Table]:
    """The trials table of study ``name``, then the regime map of each of its methods (``rows``: its trial rows)."""
    methods = sorted({g.method for g in labelled})
    return [trials_table(labelled, name), *(map_table(regime_map(labelled, rows, m), m) for m in methods)]
