"""Tensor-resident splits and a loader that slices a random permutation (no workers, no PIL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from enstune.methods._base import Recipe

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at ``index``."""
        return Split(self.x[index], self.y[index])

    def sample(self, n: int, seed: int) -> Split:
        """At most ``n`` examples: a seeded random subset, or the whole split when it is no larger."""
        if len(self) <= n:
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.subset(keep.to(self.y.device))


@dataclass(frozen=True)
class TaskData:
    """A target task; ``source`` is the task its checkpoints were pre-trained on, when known."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    augment: Augment | None = None
    # The task the checkpoints are pre-trained on, when enstune makes its own checkpoints.
    source: TaskData | None = None
    pretrain: Recipe | None = None
    # Out-of-distribution test sets, {family: [severity 1..5]}, made on first use.
    ood: Callable[[], dict[str, list[Split]]] | None = None


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a training set into (train, val) with a fixed seed, as in the paper's protocol."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(train)))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches; the last, smaller batch is kept."""
    perm = torch.randperm(len(split), generator=generator).to(split.x.device)
    for start in range(0, len(split), batch_size):
        idx = perm[start : start + batch_size]
        x = split.x[idx]
        yield (augment(x, generator) if augment is not None else x), split.y[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of mini-batches in one epoch of ``n`` examples."""
    return -(-n // batch_size)
