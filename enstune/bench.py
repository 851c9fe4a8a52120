"""A maker's bench: one job's view of a workspace on one device (``enstune.methods.Bench``), and BN re-estimation."""

from __future__ import annotations

import math
from typing import Any

import torch

from enstune.data import Split
from enstune.methods import MemberJob
from enstune.models import stage_modules
from enstune.recipe import Augmentation, Recipe
from enstune.training import EpochCallback, TrainStats, epoch_steps, train


class JobBench:
    """What a maker works with for one job: the job's device, the task's data and networks, the one training loop."""

    # ``ws`` is the ``enstune.members.Workspace`` that builds the bench, ``refs`` its results of the jobs ``job``
    # reads (typed loosely: the workspace imports this module, not the other way round).
    def __init__(self, ws: Any, job: MemberJob, device: torch.device, refs: dict[int, Any],
                 on_epoch: EpochCallback | None) -> None:
        self.ws, self.job, self.device, self.refs, self.on_epoch = ws, job, device, refs, on_epoch

    def split(self, name: str, augmentation: Augmentation = Augmentation()) -> Split:
        """Split ``name`` bound to the job's device."""
        return self.ws.split(name, self.device, augmentation)

    def model_from(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The task's network with weights ``state`` on the job's device."""
        return self.ws.model_from(state, self.device)

    def train(self, model: torch.nn.Module, job: MemberJob, **options: Any) -> TrainStats:
        """The one training loop on ``model`` with ``job``'s recipe, seed, regularizer and frozen stages."""
        extra = self.ws.terms.extra(job, {i: r.state for i, r in self.refs.items()}, model, self.device)
        kwargs: dict[str, Any] = {"on_epoch": self.on_epoch, "extra": extra,
                                  "frozen": stage_modules(model, job.freeze), "tap": job.tap}
        return train(model, self.split("train", job.recipe.augmentation), job.recipe, seed=job.seed,
                     **(kwargs | options))

    def epoch_steps(self, recipe: Recipe) -> int:
        """Optimizer steps in one epoch of the training loop under ``recipe`` (as many on every DDP rank)."""
        return epoch_steps(self.split("train", recipe.augmentation), recipe.batch_size)

    def recalibrate(self, model: torch.nn.Module, images: int) -> None:
        """BatchNorm statistics of ``model`` re-estimated on at least ``images`` augmented training images, as
        trained members saw them."""
        recalibrate_on(self.split("train", self.job.recipe.augmentation), model, self.job.recipe.batch_size, images,
                       torch.Generator().manual_seed(self.job.seed), self.device)


def recalibrate_on(split: Split, model: torch.nn.Module, batch_size: int, images: int, generator: torch.Generator,
                   device: torch.device) -> None:
    """BatchNorm statistics of ``model`` averaged (``update_bn``) over whole epochs of ``split``'s training batches,
    drawn with ``generator``, until at least ``images`` images (at least one epoch)."""
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images=}")
    # A small training set seen once gives noisy statistics; fresh augmented epochs average the noise away.
    epochs = max(1, math.ceil(images / max(1, len(split))))
    batches = (x for _ in range(epochs) for x, _ in split.training_batches(batch_size, generator))
    torch.optim.swa_utils.update_bn(batches, model, device=device)
