"""A trial's members made ready for the evaluators, on a workspace's data and networks, and what that costs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from enstune.config import StudySpec
from enstune.data import TaskData
from enstune.evaluation.evaluators import Members, forward_passes
from enstune.evaluation.weights import WeightSpace


def trial_members(ws: Any, results: list[Any], device: torch.device, seed: int, spec: StudySpec,
                  on_model: Callable[[], None] | None = None) -> Members:
    """A trial's members, ready for the evaluators, on ``device``, at the spec's evaluation sizes.

    ``ws`` is an ``enstune.members.Workspace`` and ``results`` its ``MemberResult``s (typed loosely: the evaluation
    sits below the workspace, which never reads it).
    """
    # BN statistics from one augmented pass over at most bn_images training images: a smaller training
    # set passed again adds only new augmentations of the same images, at the cost of another pass.
    train = ws.split("train", device).sample(spec.bn_images, seed)
    # The reporter that hears of each finished model (``on_model``, its weight_model_done) hears of a long one's pass.
    progress = getattr(getattr(on_model, "__self__", None), "weight_model_progress", None)

    def bn_batches() -> Iterator[torch.Tensor]:
        # Training-mode inputs (augmented, as BN saw them in training), the same on every call.
        generator, seen = torch.Generator().manual_seed(seed), 0
        for x, _ in train.training_batches(256, generator):
            yield x
            seen += len(x)
            if progress is not None:  # a model's BN pass can take minutes: its progress, as training's
                progress(seen, len(train))

    return Members([r.state for r in results], [r.val_probs for r in results], [r.test_probs for r in results],
                   train, ws.split("val", device), ws.split("test", device),
                   WeightSpace(lambda state: ws.model_from(state, device), bn_batches, on_model), seed,
                   spec.interp_points, spec.curve_images, spec.ood_images, ws.ood, lambda split: ws.bind(split, device))


def evaluation_cost(data: TaskData, spec: StudySpec) -> str:
    """One line: the forward passes (images through a network) the spec's evaluators take per trial, on ``data``."""
    sizes = {"train": min(spec.bn_images, len(data.train)), "val": len(data.val),
             "test": len(data.test), "curve": min(spec.curve_images, len(data.val))}
    cost = forward_passes(spec.evaluate, spec.members, spec.interp_points, **sizes)
    models = sum(m for m, _ in cost.values())
    parts = ", ".join(f"{name} {images:,} ({m} models)" for name, (m, images) in cost.items() if m or images)
    ood = " + the OOD sets, K + 1 passes over each" if "ood" in spec.evaluate and data.ood is not None else ""
    return (f"evaluation per trial: ~{sum(i for _, i in cost.values()):,} forward passes over {models} weight-space "
            f"models, BN recalibrated on {sizes['train']:,} training images each"
            + (f" ({parts})" if parts else "") + ood)
