"""JPEG decoding where the batch trains: workers read bytes and draw crops, the device decodes and transforms.

The per-image transforms of a streamed folder (``image_steps``) serve both of its paths. On the
PIL path a worker decodes and transforms each image. On the device path a worker reads the
file's bytes and its size from the header (PIL parses it lazily) and, to train, draws the image's
RandomResizedCrop box and flip from the example's seed, the draws the PIL path makes; the batch
is then decoded with one ``torchvision.io.decode_jpeg`` call on the split's device (nvjpeg on
CUDA, libjpeg on the CPU), cropped and resized per image with the same v2 kernels, flipped, and
handed to RandAugment and colour jitter with the example's random stream where the worker left
it. So a seed gives the same crops, flips and augmentations on both paths; only the decoders'
and resamplers' rounding differs. Files that are not colour JPEGs (PNG, grey, CMYK) are decoded
by PIL in the worker, and a JPEG the device's decoder refuses by PIL in the main process: every
dataset the PIL path reads, this path reads.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from enstune.data.augment import color_jitters, timm_augment
from enstune.data.images import eval_resize, interpolation_mode
from enstune.data.scan import Unreadable
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

T = TypeVar("T")


@dataclass(frozen=True)
class Steps:
    """The per-image transforms of one pass: ``crop`` set to train, else ``evaluate``'s resize and centre crop."""

    crop: v2.RandomResizedCrop | None
    flip: v2.RandomHorizontalFlip | None
    augment: tuple[v2.Transform, ...]  # RandAugment, before the PIL path's conversion to a tensor
    jitter: tuple[v2.Transform, ...]  # colour jitter, after it
    evaluate: tuple[v2.Transform, ...]


def image_steps(preprocess: Preprocess, augmentation: Augmentation, train: bool) -> Steps:
    """timm's per-image transforms: RandomResizedCrop, flip (+ timm's auto-augment or RandAugment, jitter); or Resize,
    CenterCrop. The crop and flip are torchvision's, the draws of timm's own, from torch's generator so that
    both decoding paths draw alike."""
    mode = interpolation_mode(preprocess.interpolation)
    size = list(preprocess.size)
    evaluate = (v2.Resize(eval_resize(preprocess), interpolation=mode, antialias=True), v2.CenterCrop(size))
    if not train or augmentation.policy == "none":
        return Steps(None, None, (), (), evaluate)
    augment: tuple[Any, ...] = ()
    if augmentation.auto_augment:  # timm's create_transform: crop, flip, then its auto-augment on the PIL image
        augment = (timm_augment(augmentation.auto_augment, min(size), tuple(preprocess.mean),
                                preprocess.interpolation),)
    elif augmentation.policy == "randaugment" and augmentation.ops > 0:
        augment = (v2.RandAugment(num_ops=augmentation.ops, magnitude=augmentation.magnitude),)
    return Steps(v2.RandomResizedCrop(size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip(),
                 augment, tuple(color_jitters(augmentation)), evaluate)


def _quiet(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # torchvision 0.29 deprecates its image I/O in favour of TorchCodec, which has no batched nvjpeg
    # decode of in-memory JPEGs to offer here; one warning per call would bury a run's log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args, **kwargs)


class Encoded(NamedTuple):
    """One example as a worker hands it over: its bytes (or PIL's decoding of them) and its draws."""

    path: str
    data: torch.Tensor  # the file's bytes (1-D uint8) when it is a colour JPEG, else its (3, H, W) uint8 image
    box: dict[str, int] | None  # RandomResizedCrop's top, left, height, width; None: evaluation's resize and crop
    flip: bool
    state: torch.Tensor | None  # the example's generator after the crop and flip, for RandAugment and jitter


class Reader:
    """A worker's part of the device path: ``reader(path, seed)`` reads one file and draws its crop and flip."""

    def __init__(self, steps: Steps) -> None:
        self.crop, self.flip = steps.crop, steps.flip
        self.stream = bool(steps.augment or steps.jitter)

    def __call__(self, path: str, seed: int | None) -> Encoded | Unreadable:
        try:
            data = read_bytes(path)
            with Image.open(io.BytesIO(data.numpy())) as image:  # parses the header only
                width, height = image.size
                # PNG and the like; grey and CMYK JPEGs too, which the GPU decoder may refuse: PIL's
                # conversion to RGB, the PIL path's own.
                if image.format != "JPEG" or image.mode != "RGB":
                    data = TF.pil_to_tensor(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any decoder's failure: the main process names the file
            return Unreadable(path, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200])
        if self.crop is None or seed is None:
            return Encoded(path, data, None, False, None)
        # The PIL path's draws, in its order, from the same per-example seed: the box, then the flip's coin.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            box = self.crop.make_params([torch.zeros(()).expand(1, height, width)])  # only the size is read
            flip = bool(torch.rand(1) < self.flip.p)  # as _RandomApplyTransform tosses it
            state = torch.get_rng_state() if self.stream else None
        return Encoded(path, data, box, flip, state)


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor, read once into memory a worker can hand over."""
    # Not torchvision.io.read_file: it maps the file, and a DataLoader worker cannot hand a mapped
    # storage to the main process (sharing its file descriptor fails with EBADF and the loader hangs).
    with open(path, "rb") as f:
        data = torch.empty(os.fstat(f.fileno()).st_size, dtype=torch.uint8)
        if f.readinto(data.numpy()) != len(data):
            raise EnstuneError(f"{path} changed while it was read")
    return data


def gather(items: list[tuple[Encoded | Unreadable, int]]) -> tuple[list[Encoded | Unreadable], torch.Tensor]:
    """A DataLoader's collate for the device path: the examples as a list (their sizes differ), labels as a tensor."""
    return [e for e, _ in items], torch.tensor([label for _, label in items], dtype=torch.long)


def _pil(item: Encoded, device: torch.device) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(item.data.numpy())) as image:
            return TF.pil_to_tensor(image.convert("RGB")).to(device)
    except OSError as exc:  # PIL's errors for unreadable, truncated or unknown files
        raise EnstuneError(f"cannot decode {item.path}: {exc}") from None


def _decode_one(item: Encoded, device: torch.device) -> torch.Tensor:
    try:
        return _quiet(decode_jpeg, item.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return _pil(item, device)


_decoder_device: list[torch.device] = []  # the one GPU whose decoder this process uses


def _decoding_device(device: torch.device) -> torch.device:
    """Where to decode for ``device``: the CPU, or the first GPU this process decoded on.

    torchvision keeps one nvjpeg decoder per process and builds a new one (the old one is never
    freed) whenever the device changes; evaluation threads on several GPUs would do so every batch.
    """
    if device.type != "cuda":
        return device
    if not _decoder_device:
        _decoder_device.append(device)
    return _decoder_device[0]


def decode(items: Sequence[Encoded], device: torch.device) -> list[torch.Tensor]:
    """Each example's (3, H, W) uint8 image on ``device``: the JPEGs in one batched decode there."""
    images = [item.data.to(device, non_blocking=True) if item.data.dim() == 3 else None for item in items]
    jpegs = [i for i, image in enumerate(images) if image is None]
    if not jpegs:
        return images
    at = _decoding_device(device)
    try:
        decoded = _quiet(decode_jpeg, [items[i].data for i in jpegs], mode=ImageReadMode.RGB, device=at)
    except RuntimeError:  # one refused JPEG fails the whole call: each alone, PIL for those refused
        decoded = [_decode_one(items[i], at) for i in jpegs]
    for i, image in zip(jpegs, decoded):
        images[i] = image.to(device, non_blocking=True)
    return images


def _continue(image: torch.Tensor, state: torch.Tensor, steps: Sequence[v2.Transform]) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):  # RandAugment and ColorJitter draw from the global CPU generator
        torch.set_rng_state(state)
        for step in steps:
            image = step(image)
        return image


def device_batch(items: Sequence[Encoded], steps: Steps, device: torch.device) -> torch.Tensor:
    """The uint8 batch (N, 3, h, w) on ``device``: decoded, cropped and resized per image, flipped, augmented."""
    out = []
    for item, image in zip(items, decode(items, device)):
        if item.box is None:
            for step in steps.evaluate:
                image = step(image)
        else:
            image = steps.crop.transform(image, item.box)
        out.append(image)
    x = torch.stack(out)
    flip = torch.tensor([item.flip for item in items], device=x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    later = (*steps.augment, *steps.jitter)
    if later:
        x = torch.stack([_continue(image, item.state, later) for image, item in zip(x, items)])
    return x
