"""The embedded demo task, built from scikit-learn's digits: no download, no GPU.

Source task (what the demo checkpoints are pre-trained on): the ten digit classes on
one half of the images. Target task: the same classes on the other half, seen through
a fixed corruption (sensor noise), with only a few labels per class. The pre-trained
features carry knowledge the few target labels cannot teach, so straying too far from
the pre-train basin costs accuracy, as in the paper's transfer setting.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from enstune.data import register_dataset
from enstune.data._base import Split, TaskData, carve_validation
from enstune.data.augment import random_shift
from enstune.data.corruptions import corrupt
from enstune.methods._base import Recipe

SOURCE_SIZE = 900  # of the 1797 shuffled images, the first form the source task
NOISE_STD = 0.3  # corruption of the target domain, in units of the [0, 1] pixel range
LABELS_PER_CLASS = 10  # target training labels per class
TEST_SIZE = 400  # target test images
DATA_SEED = 0  # the digits shuffle and the corruption noise
# Severities of the demo's OOD test sets (8x8 digits already carry noise 0.3); contrast and
# JPEG quality follow CIFAR-10-C's tables.
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


def _per_class(y: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([(y == c).nonzero().flatten()[:n] for c in range(int(y.max()) + 1)])


def source_task() -> TaskData:
    """The pre-training task of the demo checkpoints."""
    x, y = _digits()
    n = SOURCE_SIZE
    train, val = carve_validation(Split(x[:n], y[:n]), 0.1, DATA_SEED)
    return TaskData(train, val, val, num_classes=10, augment=partial(random_shift, pad=1))


@register_dataset("demo")
def demo(task, home: Path) -> TaskData:  # noqa: ANN001
    """The demo target task; validation is carved from its training set with ``task.split_seed``."""
    x, y = _digits()
    x, y = x[SOURCE_SIZE:], y[SOURCE_SIZE:]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(DATA_SEED + 1))
    x = (x + NOISE_STD * noise).clamp_(0, 1)
    test = Split(x[:TEST_SIZE], y[:TEST_SIZE])
    train, val = carve_validation(Split(x[TEST_SIZE:], y[TEST_SIZE:]), task.val_fraction, task.split_seed)
    train = train.subset(_per_class(train.y, LABELS_PER_CLASS))
    return TaskData(train, val, test, num_classes=10, augment=partial(random_shift, pad=1),
                    source=source_task(), pretrain=PRETRAIN, ood=partial(corrupt, test, OOD, DATA_SEED + 2))
