"""CIFAR-10 and CIFAR-100 through torchvision's dataset classes, held as uint8 images transformed on the device."""

from __future__ import annotations

import os
import pickle
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_md5

from enstune.data._base import TaskData, TensorSplit, carve_validation
from enstune.data._registry import register_dataset
from enstune.data.corruptions import load_cifar_c
from enstune.data.images import image_transforms
from enstune.errors import EnstuneError

# Pixel statistics of the training sets: the normalisation of backbones without an image config.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _lenient(cls: type[CIFAR10]) -> type[CIFAR10]:
    """``cls`` with its checksums dropped: it still requires every file, and reads copies that differ."""
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _check_files(cls: type[CIFAR10], root: Path, label: str) -> None:
    """Every file present (or a one-line error); a warning for each whose checksum is not the official one."""
    folder = root / cls.base_folder
    for name, md5 in [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]:
        path = folder / name
        if not path.is_file():
            raise EnstuneError(f"{label} data not found: expected {path} (set task.data_dir)")
        if not check_md5(str(path), md5):
            warnings.warn(f"{path}: checksum differs from the official {label} file's; reading it anyway",
                          stacklevel=2)


def _split(ds: CIFAR10, transforms) -> TensorSplit:  # noqa: ANN001 - a Transforms factory
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # uint8 (N, 3, 32, 32)
    return TensorSplit(x, torch.tensor(ds.targets, dtype=torch.long), transforms)


def _cifar(cls: type[CIFAR10], label: str, corrupted: str, mean: tuple[float, ...], std: tuple[float, ...],
           task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    root = Path(task.data_dir.format(home=home))
    _check_files(cls, root, label)
    transforms = partial(image_transforms, mean=mean, std=std)
    reader = _lenient(cls)
    try:
        train_set = reader(os.fspath(root), train=True, download=False)
        test_set = reader(os.fspath(root), train=False, download=False)
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise EnstuneError(f"cannot read {label} from {root / cls.base_folder}: {exc}") from None
    train, test, classes = _split(train_set, transforms), _split(test_set, transforms), tuple(test_set.classes)
    train, val = carve_validation(train, task.val_fraction, task.split_seed)
    ood = partial(load_cifar_c, root / corrupted, transforms) if (root / corrupted).is_dir() else None
    return TaskData(train, val, test, num_classes=len(classes), classes=classes, ood=ood)


@register_dataset("cifar10")
def cifar10(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """CIFAR-10 from ``task.data_dir``/cifar-10-batches-py (the python pickles; never downloaded)."""
    return _cifar(CIFAR10, "CIFAR-10", "CIFAR-10-C", CIFAR10_MEAN, CIFAR10_STD, task, home)


@register_dataset("cifar100")
def cifar100(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """CIFAR-100 from ``task.data_dir``/cifar-100-python (the python pickles; never downloaded)."""
    return _cifar(CIFAR100, "CIFAR-100", "CIFAR-100-C", CIFAR100_MEAN, CIFAR100_STD, task, home)
