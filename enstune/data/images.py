"""Batched, on-device transforms of image tensors (N, 3, h, w), uint8 or floats in [0, 1], for ``TensorSplit``.

Training: RandomResizedCrop and a horizontal flip, every image its own box, done as one
``grid_sample`` of the batch (no library crops a batch per image); evaluation: torchvision's
Resize + CenterCrop + Normalize, applied to the batch. Only a batch is ever a float tensor at
the backbone's input size, never the split.

Augmentation runs at the images' native size, before the batched crop: timm's auto-augment
(``finetune.auto_augment``, PIL operations image by image on the CPU) or the ``randaugment``
policy's torchvision RandAugment. timm's order puts it after the crop, at the input size, where
the same operations on 224-pixel PIL images would cost every batch a CPU round trip several
times dearer (measured on one core: ~220 images/s at 224 against ~2,000 at 32); the
operations are the same, their translations scaled to the size they act on.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2

from enstune.data._base import EvalTransform, TrainTransform
from enstune.data.augment import crop_flip, random_color, timm_batch
from enstune.errors import EnstuneError
from enstune.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from enstune.recipe import POLICIES, Augmentation

SCALE = (0.08, 1.0)  # RandomResizedCrop's area fraction
RATIO = (3 / 4, 4 / 3)  # and aspect ratio
TRIES = 10  # boxes drawn before the centre-crop fallback, as torchvision does


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's interpolation mode for a ``Preprocess.interpolation``."""
    if name not in ("bilinear", "bicubic"):
        raise EnstuneError(f"interpolation must be 'bilinear' or 'bicubic', got {name!r}")
    return InterpolationMode(name)


def eval_resize(preprocess: Preprocess) -> int | list[int]:
    """Resize's size before the centre crop: the shorter side at size / crop_pct (each side when not square)."""
    h, w = preprocess.size
    if h == w:
        return int(h / preprocess.crop_pct)
    return [int(h / preprocess.crop_pct), int(w / preprocess.crop_pct)]


def check_policy(augmentation: Augmentation) -> None:
    """Refuse an augmentation policy that no transform implements."""
    if augmentation.policy not in POLICIES:
        raise EnstuneError(f"augmentation policy must be one of {', '.join(POLICIES)}, got {augmentation.policy!r}")


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes (top, left, height, width) in pixels, drawn as torchvision draws one."""
    area = height * width
    target = area * torch.empty(n, TRIES).uniform_(*SCALE, generator=generator)
    aspect = torch.exp(torch.empty(n, TRIES).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator))
    bw, bh = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    fits = (bw > 0) & (bw <= width) & (bh > 0) & (bh <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # torchvision keeps the first box that fits
    bw, bh = bw.gather(1, first)[:, 0], bh.gather(1, first)[:, 0]
    top = (torch.rand(n, generator=generator) * (height - bh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - bw + 1)).floor()
    # No box fits in TRIES draws: the centre crop at the nearest allowed aspect ratio.
    fw, fh = width, height
    if width / height < RATIO[0]:
        fh = round(width / RATIO[0])
    elif width / height > RATIO[1]:
        fw = round(height * RATIO[1])
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.float)
    boxes = torch.stack([top, left, bh, bw], 1)
    return torch.where(fits.any(1, keepdim=True), boxes, fallback).long()


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: tuple[int, int],
                  interpolation: str) -> torch.Tensor:
    """Each image's box resized to ``size`` (and mirrored where ``flip``), as one resampling of the batch."""
    n, _, h, w = x.shape
    boxes, flip = boxes.to(x.device, torch.float), flip.to(x.device)
    top, left, bh, bw = boxes.unbind(1)
    # align_corners=False: [-1, 1] spans the pixels' outer edges, so the box maps to its edges too.
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(flip, -bw / w, bw / w)
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], *size], align_corners=False)
    # border: taps beyond the image repeat its edge, as Resize does; no antialias (crops are mostly upscaled)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def _randaugment(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation) -> torch.Tensor:
    """torchvision's RandAugment, its own ops for each image, drawn from a seed of ``generator``."""
    if augmentation.ops == 0:
        return x
    augment = v2.RandAugment(num_ops=augmentation.ops, magnitude=augmentation.magnitude)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    # RandAugment draws from the global RNG: seed a private copy of it, the caller's stays as it was.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU's alone: fork_rng keeps only its state
        return torch.stack([augment(image) for image in x])


def _augment(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation, mean: tuple[float, ...],
             interpolation: str) -> torch.Tensor:
    """The augmentation before the batched crop: timm's auto-augment, or the policy's RandAugment, at native size."""
    if augmentation.auto_augment:
        return timm_batch(x, generator, augmentation, mean, interpolation)
    if augmentation.policy == "randaugment":
        return _randaugment(x, generator, augmentation)
    return x


def _train(x: torch.Tensor, generator: torch.Generator, preprocess: Preprocess, augmentation: Augmentation,
           normalize: v2.Normalize) -> torch.Tensor:
    x = _augment(x, generator, augmentation, preprocess.mean, preprocess.interpolation)
    boxes = crop_boxes(len(x), x.shape[-2], x.shape[-1], generator)
    flip = torch.rand(len(x), generator=generator) < 0.5
    out = resized_crops(_unit(x), boxes, flip, preprocess.size, preprocess.interpolation)
    return normalize(random_color(out.clamp_(0, 1), generator, augmentation))  # bicubic overshoots the pixel range


def _native_train(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation,
                  normalize: v2.Normalize) -> torch.Tensor:
    x = _augment(x, generator, augmentation, tuple(normalize.mean), "bicubic")
    return normalize(random_color(crop_flip(_unit(x), generator), generator, augmentation))


def _eval_as_train(x: torch.Tensor, _generator: torch.Generator, evaluate: EvalTransform) -> torch.Tensor:
    return evaluate(x)


def _native_eval(x: torch.Tensor, normalize: v2.Normalize) -> torch.Tensor:
    return normalize(_unit(x))


def image_transforms(preprocess: Preprocess | None, augmentation: Augmentation,
                     mean: tuple[float, ...] = IMAGENET_MEAN,
                     std: tuple[float, ...] = IMAGENET_STD) -> tuple[TrainTransform, EvalTransform]:
    """(train, evaluate) of image batches at ``preprocess``'s input; without one, native size and ``mean``/``std``.

    A ``Transforms`` factory: datasets bind ``mean``/``std`` (their pixel statistics, used only
    when the backbone has no image config) with ``functools.partial``.
    """
    check_policy(augmentation)
    if preprocess is None:
        # A small network on native-size images: the 4-pixel crop and flip of CIFAR training.
        normalize = v2.Normalize(list(mean), list(std))
        evaluate = partial(_native_eval, normalize=normalize)
        train = partial(_native_train, augmentation=augmentation, normalize=normalize)
    else:
        normalize = v2.Normalize(list(preprocess.mean), list(preprocess.std))
        evaluate = v2.Compose([
            v2.Resize(eval_resize(preprocess), interpolation=interpolation_mode(preprocess.interpolation),
                      antialias=True),
            v2.CenterCrop(list(preprocess.size)), v2.ToDtype(torch.float32, scale=True), normalize])
        train = partial(_train, preprocess=preprocess, augmentation=augmentation, normalize=normalize)
    if augmentation.policy == "none":
        return partial(_eval_as_train, evaluate=evaluate), evaluate
    return train, evaluate
