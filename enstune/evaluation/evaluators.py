"""Evaluators of a completed trial, in a registry; each returns user attributes for the trial."""

from __future__ import annotations

import queue
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from enstune.data._base import Split
from enstune.evaluation import accuracy
from enstune.evaluation.metrics import diversity, ece, nll
from enstune.registry import Registry
from enstune.evaluation.weights import State, WeightSpace, barrier
from enstune.training import predict

# Every point in weight space is a new model: BN recalibration and two accuracies. On 1,024
# images each (the spec's bn_images and curve_images), connectivity costs about 5.4 s per demo
# trial on one CPU thread (8.4 s at 2,048).


@dataclass
class Members:
    """A trial's finished members and what evaluators need to rebuild and test them."""

    states: list[State]
    val_probs: list[torch.Tensor]
    test_probs: list[torch.Tensor]
    train: Split  # a training subset on the evaluation device
    val: Split
    test: Split
    weights: WeightSpace
    seed: int
    interp_points: int = 11
    curve_images: int = 1024  # validation images for accuracy along segments and joint connectivity
    ood_images: int = 0  # images of each OOD set (0: all)
    # The OOD sets, {family: [severity 1..5]} unbound (None: the task has none), made on the first call: only the
    # ood evaluator reads them, and making them (corrupting images, reading CIFAR-C) is a worker's cost otherwise.
    ood: Callable[[], dict[str, list[Split]] | None] = lambda: None
    bind: Callable[[Split], Split] | None = None  # an unbound split on the evaluation device

    def ensemble(self, split: str) -> torch.Tensor:
        """Mean probabilities of all members on ``val`` or ``test``."""
        probs = self.val_probs if split == "val" else self.test_probs
        return torch.stack(probs).mean(0)


Evaluator = Callable[[Members], dict[str, Any]]
EVALUATORS: Registry[Evaluator] = Registry("evaluator")
register_evaluator = EVALUATORS.register


JOINT_SAMPLES = 50  # Dirichlet draws of joint connectivity


def forward_passes(names: Sequence[str], k: int, points: int, *, train: int, val: int, test: int,
                   curve: int) -> dict[str, tuple[int, int]]:
    """{evaluator: (weight-space models, images through a network)} for ``k`` members, ``points`` per segment,
    ``train`` BN images per model and the split sizes; OOD sets not counted (they are made on first use)."""
    out: dict[str, tuple[int, int]] = {}
    for name in names:
        if name == "soups":  # uniform soup (val, test), a model per greedy candidate (val), the greedy soup (test)
            models, images = k + 2, 2 * (val + test) + k * val - val
        elif name == "connectivity" and k >= 2:
            segments = 1 + (k > 2)  # first to last, and a random pair
            models = segments * points + k + JOINT_SAMPLES
            images = segments * points * (train + curve) + (k + JOINT_SAMPLES) * curve
        elif name == "ood":
            models, images = 1, 0  # the uniform soup; its passes over the OOD sets are not counted here
        else:  # cached predictions only
            models, images = 0, 0
        out[name] = (models, images + models * train)
    return out


def list_evaluators() -> list[str]:
    """Names of the registered evaluators."""
    return EVALUATORS.names()


def evaluate(members: Members | Sequence[Members], names: tuple[str, ...] | list[str],
             on_step: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run evaluators ``names`` and merge their attributes; ``on_step(name, i, n)`` before each.

    Given the same trial's members bound to several devices, the evaluators run side by side, each
    taking the next free device; the attributes are the same as on one device.
    """
    bound = [members] if isinstance(members, Members) else list(members)
    evaluators = [EVALUATORS.get(name) for name in names]  # an unknown name fails before any work
    if len(bound) == 1 or len(names) < 2:
        out: dict[str, Any] = {}
        for i, (name, fn) in enumerate(zip(names, evaluators)):
            if on_step is not None:
                on_step(name, i + 1, len(names))
            out.update(fn(bound[0]))
        return out
    free: queue.SimpleQueue[Members] = queue.SimpleQueue()
    for m in bound:
        free.put(m)

    def run(i: int) -> dict[str, Any]:
        m = free.get()  # as many threads as devices: one is always free here
        try:
            if on_step is not None:
                on_step(names[i], i + 1, len(names))
            return evaluators[i](m)
        finally:
            free.put(m)

    with ThreadPoolExecutor(max_workers=len(bound)) as pool:
        parts = list(pool.map(run, range(len(names))))
    return {k: v for part in parts for k, v in part.items()}  # in the order of ``names``, as on one device


@register_evaluator("calibration")
def _calibration(m: Members) -> dict[str, Any]:
    val, test = m.ensemble("val"), m.ensemble("test")
    return {"val_nll": nll(val, m.val.y), "test_nll": nll(test, m.test.y), "test_ece": ece(test, m.test.y)}


@register_evaluator("diversity")
def _diversity(m: Members) -> dict[str, Any]:
    return {"diversity": diversity(m.test_probs, m.test.y), "val_diversity": diversity(m.val_probs, m.val.y)}


@register_evaluator("soups")
def _soups(m: Members) -> dict[str, Any]:
    k = len(m.states)
    uniform = m.weights.model(m.states, [1 / k] * k)
    val_accs = [accuracy(p, m.val.y) for p in m.val_probs]
    chosen, greedy_val = m.weights.greedy_soup(m.states, val_accs, m.val)
    greedy = m.weights.model([m.states[i] for i in chosen], [1 / len(chosen)] * len(chosen))
    return {"soup_val_acc": accuracy(predict(uniform, m.val), m.val.y),
            "soup_test_acc": accuracy(predict(uniform, m.test), m.test.y),
            "greedy_soup_members": [i + 1 for i in sorted(chosen)], "greedy_soup_val_acc": greedy_val,
            "greedy_soup_test_acc": accuracy(predict(greedy, m.test), m.test.y)}


@register_evaluator("connectivity")
def _connectivity(m: Members) -> dict[str, Any]:
    k = len(m.states)
    if k < 2:
        return {}
    # Each curve point is a model with recalibrated BN: a seeded subset keeps large sets affordable.
    curve_val = m.val.sample(m.curve_images, m.seed)
    train, val = m.weights.segment(m.states[0], m.states[-1], [m.train, curve_val], m.interp_points)
    out: dict[str, Any] = {"curve_images": len(curve_val), "interp_train_acc": train, "interp_val_acc": val,
                           "barrier_train": barrier(train), "barrier_val": barrier(val)}
    if k > 2:
        i, j = sorted(random.Random(m.seed).sample(range(k), 2))
        train, val = m.weights.segment(m.states[i], m.states[j], [m.train, curve_val], m.interp_points)
        out.update({"pair": [i + 1, j + 1], "barrier_train_pair": barrier(train), "barrier_val_pair": barrier(val)})
    out["joint_connectivity"] = m.weights.joint_connectivity(m.states, curve_val, JOINT_SAMPLES, seed=m.seed)
    out["bn_images"] = len(m.train)
    return out


@register_evaluator("ood")
def _ood(m: Members) -> dict[str, Any]:
    """Ensemble, mean member and uniform soup accuracy on the corrupted test sets, by severity."""
    ood = m.ood()
    if not ood:
        return {}
    k = len(m.states)
    members = [m.weights.build(s) for s in m.states]
    soup = m.weights.model(m.states, [1 / k] * k)
    assert m.bind is not None, "OOD sets need a way to bind them to the evaluation device"
    severities = max(len(v) for v in ood.values())
    ens, single, soups = ([[] for _ in range(severities)] for _ in range(3))
    for splits in ood.values():
        for s, unbound in enumerate(splits):
            split = m.bind(unbound.sample(m.ood_images, m.seed) if m.ood_images else unbound)
            probs = [predict(model, split) for model in members]
            ens[s].append(accuracy(torch.stack(probs).mean(0), split.y))
            single[s].append(sum(accuracy(p, split.y) for p in probs) / k)
            soups[s].append(accuracy(predict(soup, split), split.y))

    def mean(rows: list[list[float]]) -> list[float]:
        return [sum(r) / len(r) for r in rows]

    out = {"ood_ens_acc_by_severity": mean(ens), "ood_member_acc_by_severity": mean(single),
           "ood_soup_acc_by_severity": mean(soups)}
    return out | {key.removesuffix("_by_severity"): sum(v) / len(v) for key, v in out.items()}
