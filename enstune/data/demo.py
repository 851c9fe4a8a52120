"""The embedded demo task, built from scikit-learn's digits: no download, no GPU.

Source task (what the demo checkpoints are pre-trained on): the ten digit classes on
one half of the images. Target task: the same classes on the other half, captured by a
noisy sensor, with only a few labels per class. The pre-trained features carry knowledge
the few target labels cannot teach, so straying too far from the pre-train basin costs
accuracy, as in the paper's transfer setting.

A labelled image is one capture of its digit; validation and test hold ``CAPTURES``
captures of each of their digits, so that differences of a fraction of a point between
ensembles stand out of the evaluation noise (with one capture each, about 350 validation
images, the paper's 1-point gaps were below it).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from enstune.data._base import TaskData, TensorSplit, carve_validation
from enstune.data._registry import register_dataset
from enstune.data.augment import random_color, random_shift
from enstune.data.corruptions import corrupt
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation, Recipe

SOURCE_SIZE = 900  # of the 1797 shuffled images, the first form the source task
NOISE_STD = 0.15  # the target sensor's noise, in units of the [0, 1] pixel range
CAPTURES = 10  # noisy captures of each validation and test digit
OOD_CAPTURES = 2  # of them, corrupted into the OOD test sets (20 sets: their cost adds up)
LABELS_PER_CLASS = 10  # target training labels per class (one capture each)
TEST_SIZE = 400  # target test digits
DATA_SEED = 0  # the digits shuffle and the sensor noise
CLASSES = tuple(str(d) for d in range(10))
# Severities of the demo's OOD test sets (on top of the sensor's noise); contrast and JPEG
# quality follow CIFAR-10-C's tables.
OOD = {"gaussian_noise": (0.1, 0.2, 0.3, 0.4, 0.5), "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.2),
       "contrast": (0.75, 0.5, 0.4, 0.3, 0.15), "jpeg": (80, 65, 58, 50, 40)}
# How the demo checkpoints are pre-trained on the source task.
PRETRAIN = Recipe(epochs=30, lr=0.1, weight_decay=5e-4, batch_size=64, warmup_epochs=1)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).div_(16).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
    return x[perm], y[perm]


def _shift(_prep: Preprocess | None, aug: Augmentation) -> tuple[Any, None]:
    """The digits' augmentation: a random one-pixel shift (any policy but ``none``), then the recipe's colour
    jitter, of which only brightness and contrast act on grey digits; evaluation as is."""
    return (None if aug.policy == "none" else partial(_shift_color, augmentation=aug)), None


def _shift_color(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation) -> torch.Tensor:
    return random_color(random_shift(x, generator, 1), generator, augmentation)


def _split(x: torch.Tensor, y: torch.Tensor) -> TensorSplit:
    return TensorSplit(x, y, _shift)


def _per_class(y: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([(y == c).nonzero().flatten()[:n] for c in range(int(y.max()) + 1)])


def source_task() -> TaskData:
    """The pre-training task of the demo checkpoints."""
    x, y = _digits()
    n = SOURCE_SIZE
    train, val = carve_validation(_split(x[:n], y[:n]), 0.1, DATA_SEED)
    return TaskData(train, val, val, num_classes=10, classes=CLASSES)


def _captures(x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, n: int) -> TensorSplit:
    """Captures 0..n-1 of digits ``x`` (capture c of all digits, then c + 1)."""
    return _split((x + NOISE_STD * noise[:n]).clamp_(0, 1).flatten(0, 1), y.repeat(n))


@register_dataset("demo", files=False)
def demo(task, home: Path) -> TaskData:  # noqa: ANN001
    """The demo target task; validation is carved from its training digits with ``task.split_seed``."""
    x, y = _digits()
    # A digit keeps its noise draws whichever split it lands in: (capture, digit, pixels).
    noise = torch.randn((CAPTURES, *x.shape), generator=torch.Generator().manual_seed(DATA_SEED + 1))
    ids = TensorSplit(torch.arange(SOURCE_SIZE, len(y)), y[SOURCE_SIZE:])  # the target digits, by index
    test = ids.subset(torch.arange(TEST_SIZE))
    train, val = carve_validation(ids.subset(torch.arange(TEST_SIZE, len(ids))), task.val_fraction, task.split_seed)
    train = train.subset(_per_class(train.y, LABELS_PER_CLASS))
    train, val, test = (_captures(x[s.x], s.y, noise[:, s.x], n)
                        for s, n in ((train, 1), (val, CAPTURES), (test, CAPTURES)))
    return TaskData(train, val, test, num_classes=10, classes=CLASSES, source=source_task(), pretrain=PRETRAIN,
                    ood=partial(corrupt, test.subset(torch.arange(OOD_CAPTURES * TEST_SIZE)), OOD, DATA_SEED + 2))
