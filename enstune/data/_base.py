"""The data interface: labelled splits that yield batches on a device, at the backbone's input.

Everything that reads data (the training loop, prediction, BN recalibration, the Fisher of
EWC, the evaluators) sees only ``Split``: ``batches(batch_size, generator)`` gives one epoch,
shuffled and augmented when a generator is given, in order through the evaluation transform
when not. A dataset builds unbound splits; ``bind(device, preprocess, augmentation)`` makes the
split that a member trains or is evaluated on. Two implementations: ``TensorSplit`` (examples
held as one tensor on the device, transformed in batches there) and the streamed folders of
``enstune.data.folders``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from enstune.cache import tensor_digest
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

Batch = tuple[torch.Tensor, torch.Tensor]
# train(x, generator) -> augmented network input; evaluate(x) -> network input
TrainTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EvalTransform = Callable[[torch.Tensor], torch.Tensor]
# (the backbone's preprocessing or None, the recipe's augmentation) -> (train, evaluate); None: identity
Transforms = Callable[[Preprocess | None, Augmentation], tuple[TrainTransform | None, EvalTransform | None]]


class Split(ABC):
    """Labelled examples of one split; ``y`` holds the labels (on any device)."""

    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @abstractmethod
    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One epoch of (inputs, labels) on the split's device; shuffled and augmented with ``generator``."""

    @abstractmethod
    def subset(self, index: torch.Tensor) -> Split:
        """The examples at ``index``, bound as this split is."""

    @abstractmethod
    def bind(self, device: torch.device, preprocess: Preprocess | None, augmentation: Augmentation) -> Split:
        """These examples on ``device``, at the backbone's input, trained with ``augmentation``."""

    @abstractmethod
    def digest(self) -> str:
        """A digest of the examples and labels: data that changes gets a new digest."""

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """``batches`` to train on: a batch of fewer than ``MIN_SHARE`` examples (a last one) is left out."""
        return ((x, y) for x, y in self.batches(batch_size, generator) if len(y) >= MIN_SHARE)

    def shard(self, rank: int, world: int) -> Split:
        """Rank ``rank``'s share of every batch, for ``world`` ranks that draw the same batches (DDP)."""
        return _Shard(self, rank, world)

    def sample(self, n: int, seed: int) -> Split:
        """At most ``n`` examples: a seeded random subset, or the whole split when it is no larger."""
        if len(self) <= n:
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.subset(keep.to(self.y.device))


MIN_SHARE = 2  # examples each rank needs of a batch: BatchNorm cannot train on one


def share(batch: torch.Tensor | Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of a batch's rows (of ``world`` near-equal shares)."""
    size, extra = divmod(len(batch), world)
    start = rank * size + min(rank, extra)
    return batch[start:start + size + (rank < extra)]


class _Shard(Split):
    """Every global batch of ``inner``, cut to this rank's share; a batch too small to share out is left out.

    Each rank draws (and augments) the whole batch, so the ranks' generators stay in step; a split
    whose examples are costly to make (files to decode) shares out the examples before it makes them.
    """

    def __init__(self, inner: Split, rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world
        self.y = inner.y

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        for x, y in self.inner.batches(batch_size, generator):
            if len(y) >= MIN_SHARE * self.world:
                yield share(x, self.rank, self.world), share(y, self.rank, self.world)

    def subset(self, index: torch.Tensor) -> Split:
        return self.inner.subset(index).shard(self.rank, self.world)

    def bind(self, device: torch.device, preprocess: Preprocess | None, augmentation: Augmentation) -> Split:
        return self.inner.bind(device, preprocess, augmentation).shard(self.rank, self.world)

    def digest(self) -> str:
        return self.inner.digest()


def _identity(_prep: Preprocess | None, _aug: Augmentation) -> tuple[None, None]:
    return None, None


class TensorSplit(Split):
    """Examples held as one tensor (uint8 images, or features) and transformed in batches on its device.

    No workers and no PIL: a batch is a slice of a seeded permutation (airbench's loader), and
    ``transforms`` turns a batch into the network's input, e.g. uint8 32×32 images into
    augmented float 224×224 ones, so the split never holds a float copy at the input size.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transforms: Transforms = _identity,
                 train: TrainTransform | None = None, evaluate: EvalTransform | None = None) -> None:
        self.x, self.y, self.transforms = x, y, transforms
        self._train, self._eval = train, evaluate

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        if generator is None:
            for start in range(0, len(self), batch_size):
                x = self.x[start:start + batch_size]
                yield (self._eval(x) if self._eval is not None else x), self.y[start:start + batch_size]
            return
        perm = torch.randperm(len(self), generator=generator).to(self.x.device)
        for start in range(0, len(self), batch_size):
            idx = perm[start:start + batch_size]
            x = self.x[idx]
            yield (self._train(x, generator) if self._train is not None else x), self.y[idx]

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.x[index.to(self.x.device)], self.y[index.to(self.y.device)], self.transforms,
                           self._train, self._eval)

    def bind(self, device: torch.device, preprocess: Preprocess | None, augmentation: Augmentation) -> TensorSplit:
        train, evaluate = self.transforms(preprocess, augmentation)
        return TensorSplit(self.x.to(device), self.y.to(device), self.transforms, train, evaluate)

    def digest(self) -> str:
        return tensor_digest(self.x, self.y)


@dataclass(frozen=True)
class TaskData:
    """A target task: unbound splits; ``source`` is the task its checkpoints were pre-trained on, when known."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...] = ()  # class names, in label order, when the dataset has them
    # The task the checkpoints are pre-trained on, when enstune makes its own checkpoints.
    source: TaskData | None = None
    pretrain: Any = None  # the Recipe that pre-trains them
    # Out-of-distribution test sets, {family: [severity 1..5]}, made on first use.
    ood: Callable[[], dict[str, list[Split]]] | None = None
    # What a trial records of the data it ran on, e.g. {"unreadable_images": 3} for files left out.
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def digest(self) -> str:
        """A digest of all three splits."""
        return hashlib.sha256(" ".join(s.digest() for s in (self.train, self.val, self.test)).encode()).hexdigest()


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a training set into (train, val) with a fixed seed, as in the paper's protocol."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(train)))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Mini-batches trained on in one epoch of ``n`` examples over ``world`` ranks: those that give every rank
    ``MIN_SHARE`` examples (the last one may not; see ``_Shard``)."""
    if batch_size < MIN_SHARE * world:
        return 0
    whole, last = divmod(n, batch_size)
    return whole + (last >= MIN_SHARE * world)
