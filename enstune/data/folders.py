"""Image files streamed from disk: ImageFolder trees (ImageNet and others) and SUN-397's official partitions.

A ``FolderSplit`` holds (file, label) pairs; a ``DataLoader`` decodes and transforms them in
workers with torchvision's v2 transforms, as timm does: RandomResizedCrop + flip (+ RandAugment)
to train, Resize(size / crop_pct) + CenterCrop to evaluate. Workers hand over uint8 batches;
the scaling to [0, 1] and the normalisation (v2's ToDtype and Normalize) run on the device, so
pinned memory and the host-to-device copy carry a quarter of the bytes. With ``decode="device"``
(the default on CUDA) the workers only read the files and draw the crops, and the device decodes
and transforms the batch (``enstune.data.jpeg``): CPU cores that cannot decode ImageNet for eight
GPUs can read it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset, pil_loader
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from enstune.data._base import MIN_SHARE, Batch, Split, TaskData, carve_validation, share
from enstune.data._registry import register_dataset
from enstune.settings import Setting
from enstune.data.augment import seeded
from enstune.data.images import check_policy
from enstune.data.jpeg import Reader, Steps, device_batch, gather, image_steps
from enstune.data.scan import Unreadable, readable
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

PREFETCH = 2  # batches each worker keeps ready

# Every dataset read through ``folder_task`` decodes JPEGs where this setting says.
DECODE = Setting("auto", "where JPEGs are decoded: workers (PIL in the loader processes), device (torchvision's "
                 "decode_jpeg there), auto (device when it is a GPU)", choices=("workers", "device", "auto"))
# DataLoader processes that read and decode the files (0: the training process itself; beyond 256, a typo).
WORKERS = Setting(8, "DataLoader worker processes that read the images", low=0, high=256)
FOLDER_SETTINGS = {"decode": DECODE, "workers": WORKERS}
PARTITION = Setting(1, "SUN-397's train/test partition (the paper uses the first)", low=1, high=10)




def _pil_transform(steps: Steps) -> v2.Compose:
    """The per-image part, PIL in, uint8 tensor at the input size out."""
    if steps.crop is None:
        return v2.Compose([*steps.evaluate, v2.PILToTensor()])
    return v2.Compose([steps.crop, steps.flip, *steps.augment, v2.PILToTensor(), *steps.jitter])


class _Decoded:
    """A worker's part of the PIL path: ``read(path, seed)`` decodes one file to RGB and transforms it."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, path: str, seed: int | None) -> torch.Tensor | Unreadable:
        try:
            image = pil_loader(path)  # RGB, whatever the file's mode
        except Exception as exc:  # noqa: BLE001 - any decoder's failure: the main process names the file
            return Unreadable(path, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200])
        if seed is None:
            return self.transform(image)
        # v2 transforms draw from torch's global RNG, timm's auto-augment from Python's and numpy's: private
        # copies seeded per example, so the draws depend on neither the worker that decodes it nor the caller's RNG.
        with seeded(seed):
            return self.transform(image)


def _collate(items: list[tuple[torch.Tensor | Unreadable, int]]) -> tuple[Batch | None, list[Unreadable]]:
    """The PIL path's collate: the batch of the files that were read (None if none was), and those that were not."""
    bad = [x for x, _ in items if isinstance(x, Unreadable)]
    good = [(x, y) for x, y in items if not isinstance(x, Unreadable)]
    return (default_collate(good) if good else None), bad


class _Images(VisionDataset):
    """Files under ``root``; an item is an index, or (index, seed) for a seeded augmentation, made by ``read``."""

    def __init__(self, root: Path, files: Sequence[str], labels: np.ndarray,
                 read: Callable[[str, int | None], Any]) -> None:
        super().__init__(os.fspath(root))
        # One bytes array, not a list of str: forked workers reading a list touch every object's
        # reference count and copy its pages, a copy of ImageNet's 1.28M names per worker.
        self.files, self.labels, self.read = np.array([os.fsencode(f) for f in files]), labels, read

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.read(os.path.join(self.root, os.fsdecode(self.files[index])), seed), int(self.labels[index])


class _Seeded:
    """A sampler: the examples in ``order``, each with its augmentation seed."""

    def __init__(self, order: torch.Tensor, seed: int) -> None:
        self.order, self.seed = order, seed

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.seed + i) for i in self.order.tolist())


class FolderSplit(Split):
    """Image files under ``root`` with their labels, streamed through a DataLoader with ``workers`` processes.

    Unbound, a split reads at ``Preprocess()`` (ImageNet's 224 config) on the CPU; ``bind`` sets
    the device and the backbone's input (its default too when the backbone has none). ``decode``
    says where JPEGs are decoded: in the workers with PIL, on the split's device, or ``auto``
    (on the device when it is a GPU); a seed draws the same crops either way.
    """

    def __init__(self, root: Path, files: Sequence[str], y: torch.Tensor, workers: int = 0,
                 device: torch.device | str = "cpu", preprocess: Preprocess | None = None,
                 augmentation: Augmentation = Augmentation(), decode: str = "auto") -> None:
        check_policy(augmentation)
        DECODE.check("decode", decode)
        self.root, self.files, self.workers, self.decode = Path(root), list(files), workers, decode
        self.device, self.preprocess, self.augmentation = torch.device(device), preprocess or Preprocess(), augmentation
        self.y = y.to(self.device)
        self._share = (0, 1)  # (rank, ranks): see shard
        self._normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                      v2.Normalize(list(self.preprocess.mean), list(self.preprocess.std))])

    def _like(self, files: list[str], y: torch.Tensor, device: torch.device, preprocess: Preprocess | None,
              augmentation: Augmentation) -> FolderSplit:
        return FolderSplit(self.root, files, y, self.workers, device, preprocess, augmentation, self.decode)

    @property
    def on_device(self) -> bool:
        """Whether the batches' JPEGs are decoded on the split's device rather than in the workers (not under timm's
        auto-augment, whose operations are PIL's)."""
        if self.augmentation.auto_augment:
            return False
        return self.decode == "device" or (self.decode == "auto" and self.device.type == "cuda")

    def shard(self, rank: int, world: int) -> FolderSplit:
        """Rank ``rank``'s share of every batch; only that share of the files is read and decoded."""
        split = self._like(self.files, self.y, self.device, self.preprocess, self.augmentation)
        split._share = (rank, world)
        return split

    def _loader(self, read: Callable[[str, int | None], Any] | None, sampler: Sequence[int] | _Seeded,
                batch_size: int, seed: int, shard: tuple[int, int] = (0, 1),
                collate: Callable[[list], Any] | None = None) -> DataLoader:
        labels = self.y.cpu().numpy()
        rank, world = shard
        batching: dict[str, Any] = {"batch_size": batch_size, "sampler": sampler}
        if world > 1:  # the whole batches, cut to this rank's share before any file is read
            order = list(sampler)
            cuts = (order[s:s + batch_size] for s in range(0, len(order), batch_size))
            batching = {"batch_sampler": [share(b, rank, world) for b in cuts if len(b) >= MIN_SHARE * world]}
        # Pinned pages pay for uint8 images; the device path's bytes go to the decoder, which copies them itself.
        pin = self.device.type == "cuda" and collate is _collate
        # A generator of its own: without one, the loader draws its workers' base seed from the global RNG.
        return DataLoader(_Images(self.root, self.files, labels, read), **batching, collate_fn=collate,
                          num_workers=self.workers, pin_memory=pin,
                          prefetch_factor=PREFETCH if self.workers > 0 else None, persistent_workers=False,
                          generator=torch.Generator().manual_seed(seed))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        train = generator is not None
        seed = int(torch.randint(0, 2**62, (), generator=generator)) if train else 0
        sampler = _Seeded(torch.randperm(len(self), generator=generator), seed) if train else range(len(self))
        steps = image_steps(self.preprocess, self.augmentation, train)
        if self.on_device:
            for items, y in self._loader(Reader(steps), sampler, batch_size, seed, self._share, gather):
                keep = [i for i, item in enumerate(items) if not isinstance(item, Unreadable)]
                if len(keep) < len(items):
                    _unreadable([items[i] for i in range(len(items)) if i not in keep], train)
                    items, y = [items[i] for i in keep], y[keep]
                if items:
                    yield self._normalize(device_batch(items, steps, self.device)), y.to(self.device)
            return
        for batch, bad in self._loader(_Decoded(_pil_transform(steps)), sampler, batch_size, seed, self._share,
                                       _collate):
            if bad:
                _unreadable(bad, train)
            if batch is not None:
                x, y = batch
                yield self._normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def subset(self, index: torch.Tensor) -> FolderSplit:
        return self._like([self.files[i] for i in index.tolist()], self.y[index.to(self.y.device)], self.device,
                          self.preprocess, self.augmentation)

    def bind(self, device: torch.device, preprocess: Preprocess | None, augmentation: Augmentation) -> FolderSplit:
        return self._like(self.files, self.y, device, preprocess, augmentation)

    def digest(self) -> str:
        """From the relative paths, file sizes and labels: reading every image's bytes would take hours."""
        h = hashlib.sha256()
        for name, label in zip(self.files, self.y.tolist()):
            h.update(f"{name}\t{os.stat(self.root / name).st_size}\t{label}\n".encode())
        return h.hexdigest()


def _unreadable(bad: Sequence[Unreadable], train: bool) -> None:
    """Files the scan found readable that a loader could not read (changed since): left out of training, an error
    in evaluation, whose predictions must match the split's labels one for one."""
    if not train:
        raise EnstuneError(f"cannot read {bad[0].path} ({bad[0].reason}): it changed after the dataset's scan "
                           f"(delete the runs directory's scans/ to scan again)")
    for item in bad:
        warnings.warn(f"left out of this batch: {item.path}, which cannot be read ({item.reason})", stacklevel=3)


def _root(task, home: Path) -> Path:  # noqa: ANN001 - enstune.config.Task
    return Path(task.data_dir.format(home=home))


def _folder(directory: Path, class_to_idx: dict[str, int] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(relative files, labels, classes) of a tree of class folders; ``class_to_idx`` from the training tree."""
    if not directory.is_dir():
        raise EnstuneError(f"image folder not found: expected {directory} with one folder per class")
    try:
        if class_to_idx is None:
            found = ImageFolder(os.fspath(directory), loader=pil_loader)
            samples, classes = found.samples, found.classes
        else:
            extra = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in class_to_idx)
            if extra:
                raise EnstuneError(f"{directory} has class folders that the training set lacks: {', '.join(extra[:5])}")
            samples = make_dataset(os.fspath(directory), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
            classes = list(class_to_idx)
    except FileNotFoundError as exc:
        raise EnstuneError(f"cannot read the image folder {directory}: {str(exc).strip()}") from None
    if not samples:
        raise EnstuneError(f"no images found under {directory} (extensions: {', '.join(IMG_EXTENSIONS)})")
    files = [os.path.relpath(path, directory) for path, _ in samples]
    return files, [label for _, label in samples], classes


def folder_task(task, home: Path, root: Path, train: tuple[Sequence[str], Sequence[int]],  # noqa: ANN001 - Task
                test: tuple[Sequence[str], Sequence[int]], classes: Sequence[str],
                test_root: Path | None = None) -> TaskData:
    """The task of two listings of (files, labels) under ``root`` (the test's under ``test_root`` when given).

    Unreadable files are left out of both (``enstune.data.scan``) and counted in the trial
    attribute ``unreadable_images``; validation is carved from what is left of the training listing.
    """
    splits, lost, workers = [], 0, task.option("workers", WORKERS.default)
    for part, (files, labels), under in (("train", train, root), ("test", test, test_root or root)):
        files, labels, n = readable(under, files, labels, home=home, name=f"{task.dataset} {part}", workers=workers)
        splits.append(FolderSplit(under, files, torch.tensor(labels, dtype=torch.long), workers,
                                  decode=task.option("decode", DECODE.default)))
        lost += n
    fit, val = carve_validation(splits[0], task.val_fraction, task.split_seed)
    return TaskData(fit, val, splits[1], num_classes=len(classes), classes=tuple(classes),
                    attrs={"unreadable_images": lost})


def _folders(task, home: Path, root: Path, test_dirs: Sequence[str]) -> TaskData:  # noqa: ANN001 - Task
    """train/ and the first of ``test_dirs`` under ``root``; validation carved from train."""
    files, labels, names = _folder(root / "train")
    test_dir = next((root / d for d in test_dirs if (root / d).is_dir()), None)
    if test_dir is None:
        raise EnstuneError(f"no test images: expected {' or '.join(str(root / d) for d in test_dirs)}")
    test_files, test_labels, _ = _folder(test_dir, {c: i for i, c in enumerate(names)})
    return folder_task(task, home, root / "train", (files, labels), (test_files, test_labels), names, test_dir)


@register_dataset("imagefolder", named_by_folder=True, settings=FOLDER_SETTINGS)
def imagefolder(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """Class folders under ``task.data_dir``/train and /test (or /val, used when there is no test/); names = folders."""
    return _folders(task, home, _root(task, home), ("test", "val"))


def _partition(sun: Path, root: Path, partition: int) -> tuple[Path, Path]:
    """The Training_NN.txt and Testing_NN.txt of ``partition``, from wherever the official files were unpacked."""
    if not 1 <= partition <= 10:
        raise EnstuneError(f"SUN-397 partition must be 1..10, got {partition}")
    names = (f"Training_{partition:02d}.txt", f"Testing_{partition:02d}.txt")
    places = (sun, root / "Partitions", sun / "Partitions")
    for place in places:
        if all((place / n).is_file() for n in names):
            return place / names[0], place / names[1]
    raise EnstuneError(f"SUN-397 partition files {' and '.join(names)} not found in any of "
                       f"{', '.join(str(p) for p in places)}")


def _listed(sun: Path, listing: Path, class_to_idx: dict[str, int]) -> tuple[list[str], list[int]]:
    """The images a partition file lists (``/a/abbey/sun_x.jpg``) and their labels."""
    files, labels = [], []
    for line in filter(None, map(str.strip, listing.read_text().splitlines())):
        parts = line.strip("/").split("/")
        key = "/".join(parts[1:-1])  # "/b/bakery/shop/sun_x.jpg" -> "bakery/shop", as in ClassName.txt
        if key not in class_to_idx:
            raise EnstuneError(f"{listing}: {line} is in no class of {sun / 'ClassName.txt'}")
        files.append("/".join(parts))
        labels.append(class_to_idx[key])
    missing = [f for f in files if not (sun / f).is_file()]
    if missing:
        raise EnstuneError(f"{listing} lists {len(missing)} images missing under {sun}, e.g. {missing[0]}")
    return files, labels


@register_dataset("sun397", settings=FOLDER_SETTINGS | {"partition": PARTITION})
def sun397(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """SUN-397 as published: ``data_dir``/SUN397/ClassName.txt, its images, and its partition (option ``partition``).

    The partition's files are ``Training_NN.txt`` / ``Testing_NN.txt``, in SUN397/, Partitions/ or
    SUN397/Partitions/; validation is carved from its training images. ClassName.txt is read here
    as torchvision's ``SUN397`` reads it (that class walks all 108,754 images and knows no partitions).
    """
    root = _root(task, home)
    sun = root / "SUN397"
    names_file = sun / "ClassName.txt"
    if not names_file.is_file():
        raise EnstuneError(f"SUN-397 not found: expected {names_file} and the images under {sun}")
    keys = [line.strip()[3:] for line in names_file.read_text().splitlines() if line.strip()]  # "/a/abbey" -> "abbey"
    if not keys or not all(keys):
        raise EnstuneError(f"{names_file}: expected one class a line, like /a/abbey")
    class_to_idx = {k: i for i, k in enumerate(keys)}
    training, testing = _partition(sun, root, task.option("partition", PARTITION.default))
    train_files, train_y = _listed(sun, training, class_to_idx)
    test_files, test_y = _listed(sun, testing, class_to_idx)
    classes = tuple(k.replace("/", " ").replace("_", " ") for k in keys)  # "apse/indoor" -> "apse indoor"
    return folder_task(task, home, sun, (train_files, train_y), (test_files, test_y), classes)
