"""CIFAR-100 through torchvision's dataset class, held as normalized tensors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from enstune.data import register_dataset
from enstune.data._base import Split, TaskData, carve_validation
from enstune.data.augment import crop_flip
from enstune.data.corruptions import load_cifar_c
from enstune.errors import EnstuneError

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _to_split(ds) -> Split:  # noqa: ANN001 - a torchvision dataset
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float().div_(255)
    return Split(_normalise(x), torch.tensor(ds.targets, dtype=torch.long))


@register_dataset("cifar100")
def cifar100(task, home: Path) -> TaskData:  # noqa: ANN001
    """CIFAR-100 from ``task.data_dir`` (the python pickles torchvision expects; never downloaded)."""
    from torchvision.datasets import CIFAR100

    root = Path(task.data_dir.format(home=home))
    if not (root / CIFAR100.base_folder).is_dir():
        raise EnstuneError(f"CIFAR-100 data not found: expected {root / CIFAR100.base_folder} (set task.data_dir)")
    try:
        train = _to_split(CIFAR100(str(root), train=True, download=False))
        test = _to_split(CIFAR100(str(root), train=False, download=False))
    except (RuntimeError, OSError, KeyError) as exc:
        raise EnstuneError(f"cannot read CIFAR-100 from {root}: {exc}") from None
    train, val = carve_validation(train, task.val_fraction, task.split_seed)
    corrupted = root / "CIFAR-100-C"
    ood = partial(load_cifar_c, corrupted, _normalise) if corrupted.is_dir() else None
    return TaskData(train, val, test, num_classes=100, augment=crop_flip, ood=ood)
