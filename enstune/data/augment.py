"""Batched augmentations on image tensors (N, C, H, W) or flat 8×8 digits."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
# The public adjust_hue shifts a whole batch by one amount; a shift per image needs its HSV conversions.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from enstune.errors import ConfigError
from enstune.recipe import Augmentation

COLOR_P = 0.5  # each colour jitter reaches an image with this probability (StarSSE paper, Appendix K)


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Translate every image by up to ``pad`` pixels (zero fill), one offset per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    di = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (di[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation: 4-pixel random crop and horizontal flip."""
    return random_flip(random_shift(x, generator, 4), generator)


def _blend(degenerate: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A jitter as torchvision computes it, ``factor × image + (1 − factor) × degenerate``, with a factor per image.

    ``degenerate`` is torchvision's own adjustment at factor 0 (black; the image's mean grey; its greyscale).
    """
    def adjust(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        grey = degenerate(x)
        if grey is x:  # torchvision's saturation of grey images: nothing to blend
            return x
        f = factor[:, None, None, None]
        return (x * f + grey * (1 - f)).clamp_(0, 1)
    return adjust


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # grey images have no hue: torchvision and PIL leave them as they are
        return x
    h, s, v = _rgb_to_hsv(x).unbind(1)
    return _hsv_to_rgb(torch.stack(((h + shift[:, None, None]).remainder_(1.0), s, v), 1))


# ColorJitter's four jitters, in its order: (adjust(images, per-image factors), the factor that leaves an image as is).
JITTERS = {
    "brightness": (_blend(lambda x: TF.adjust_brightness(x, 0.0)), 1.0),
    "contrast": (_blend(lambda x: TF.adjust_contrast(x, 0.0)), 1.0),
    "saturation": (_blend(lambda x: TF.adjust_saturation(x, 0.0)), 1.0),
    "hue": (_hue, 0.0),
}


def color_jitter(augmentation: Augmentation) -> v2.ColorJitter:
    """torchvision's ColorJitter with the augmentation's limits (checked as it checks them); None where off."""
    return v2.ColorJitter(brightness=augmentation.brightness, contrast=augmentation.contrast,
                          saturation=augmentation.saturation, hue=augmentation.hue)


def color_jitters(augmentation: Augmentation) -> list[v2.Transform]:
    """The colour jitters for images transformed one at a time (PIL or uint8): each applied with probability 0.5."""
    jitter = color_jitter(augmentation)
    return [v2.RandomApply([v2.ColorJitter(**{name: limits})], p=COLOR_P)
            for name in JITTERS if (limits := getattr(jitter, name)) is not None]


def random_color(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation) -> torch.Tensor:
    """Colour jitter of a batch of images in [0, 1], every image its own draws (``x`` itself when the jitter is off).

    Brightness, contrast, saturation and hue in turn, each applied to an image with probability 0.5 and a
    strength uniform within the augmentation's limits, as ``color_jitters`` does image by image. On grey
    (1-channel) images only brightness and contrast act: saturation and hue leave grey as it is.
    """
    if not augmentation.color:
        return x
    jitter = color_jitter(augmentation)
    for name, (adjust, identity) in JITTERS.items():
        limits = getattr(jitter, name)
        if limits is None:
            continue
        n = len(x)
        apply = (torch.rand(n, generator=generator) < COLOR_P).to(x.device)
        factor = torch.empty(n).uniform_(*limits, generator=generator).to(x.device, x.dtype)
        x = torch.where(apply[:, None, None, None], adjust(x, torch.where(apply, factor, identity)), x)
    return x


@functools.lru_cache(maxsize=16)
def timm_augment(config: str, size: int, mean: tuple[float, ...], interpolation: str) -> Callable[[Any], Any]:
    """timm's auto-augment of PIL images at ``size`` pixels, as ``timm.data.create_transform`` builds it for training.

    The secondary stage of timm's ``transforms_imagenet_train`` (its translations scaled to ``size``,
    its fill the mean pixel), without the colour jitter timm turns off under auto-augment; the crop
    and flip before it and the conversion after it are the caller's.
    """
    from timm.data.transforms_factory import transforms_imagenet_train

    try:
        _, secondary, _ = transforms_imagenet_train(size, interpolation=interpolation, mean=mean, color_jitter=None,
                                                    auto_augment=config, separate=True)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise ConfigError(f"finetune.auto_augment {config!r} is no timm auto-augment config (e.g. "
                          f"rand-m9-mstd0.5-inc1, augmix-m5-w3, original): {exc}") from None
    for step in secondary.transforms:
        for op in getattr(step, "ops", ()):
            if op.aug_fn.__name__ == "posterize":
                op.aug_fn = _posterize
    return secondary


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize; at 0 bits (its increasing posterize at magnitude 10) black, as PIL gave before it refused 0."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep) if bits_to_keep >= 1 else Image.new(img.mode, img.size)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within: torch's CPU generator, Python's ``random`` and numpy's global generator seeded from ``seed`` (timm's
    augmentations draw from all three); the caller's states are put back after."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def timm_batch(x: torch.Tensor, generator: torch.Generator, augmentation: Augmentation,
               mean: tuple[float, ...], interpolation: str) -> torch.Tensor:
    """timm's auto-augment of each uint8 image of ``x`` (N, C, h, w) at its own size, drawn from a seed of ``generator``.

    timm's operations are PIL's: each image goes to PIL and back, on the CPU, and returns to ``x``'s device.
    """
    augment = timm_augment(augmentation.auto_augment, x.shape[-1], tuple(mean), interpolation)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    images = x.cpu()
    with seeded(seed):
        out = [TF.pil_to_tensor(augment(TF.to_pil_image(image))) for image in images]
    return torch.stack(out).to(x.device)
