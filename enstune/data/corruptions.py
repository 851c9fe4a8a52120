"""Out-of-distribution test sets: corruption families in the spirit of CIFAR-100-C, five severities.

The families act on images in the [0, 1] pixel range, each with one parameter per severity;
a task picks the severity tables that suit its images. Real runs read the published
CIFAR-10-C / CIFAR-100-C arrays instead (``load_cifar_c``), held as uint8 images.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from enstune.data._base import Transforms, TensorSplit
from enstune.data.images import image_transforms
from enstune.errors import EnstuneError
from enstune.registry import Registry

Corruption = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")
_family = CORRUPTIONS.register


@_family("gaussian_noise")
def _noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@_family("gaussian_blur")
def _blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(np.ceil(2 * sigma)) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


@_family("contrast")
def _contrast(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


@_family("jpeg")
def _jpeg(x: torch.Tensor, quality: float, g: torch.Generator) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in x.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=int(quality))
        out.append(torch.from_numpy(np.array(Image.open(buf))).float().div(255))
    decoded = torch.stack(out)
    return decoded[:, None] if decoded.ndim == 3 else decoded.permute(0, 3, 1, 2)


def list_corruptions() -> list[str]:
    """Names of the corruption families."""
    return CORRUPTIONS.names()


def corrupt(split: TensorSplit, tables: dict[str, Sequence[float]], seed: int = 0) -> dict[str, list[TensorSplit]]:
    """``split`` (on the CPU; floats in [0, 1] or uint8 images) under each family at each severity of ``tables``.

    The corrupted splits keep the dtype and the transforms of ``split``.
    """
    x = split.x.float().div(255) if split.x.dtype == torch.uint8 else split.x
    out: dict[str, list[TensorSplit]] = {}
    for name, params in tables.items():
        g = torch.Generator().manual_seed(seed)
        out[name] = [TensorSplit(_like(CORRUPTIONS.get(name)(x, p, g), split.x), split.y, split.transforms) for p in params]
    return out


def _like(x: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().to(torch.uint8) if original.dtype == torch.uint8 else x


def load_cifar_c(root: Path, transforms: Transforms = image_transforms,
                 families: Sequence[str] | None = None) -> dict[str, list[TensorSplit]]:
    """The published CIFAR-10-C / CIFAR-100-C arrays (``<family>.npy`` by severity, ``labels.npy``) as uint8 splits."""
    root = Path(root)
    if not (root / "labels.npy").is_file():
        raise EnstuneError(f"CIFAR-C not found: expected {root / 'labels.npy'} and <corruption>.npy files")
    labels = torch.from_numpy(np.load(root / "labels.npy")).long()
    names = families or sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")
    out: dict[str, list[TensorSplit]] = {}
    for name in names:
        images = np.load(root / f"{name}.npy", mmap_mode="r")  # (5 * n, 32, 32, 3) uint8
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels) or len(images) % 5:
            raise EnstuneError(f"{root / f'{name}.npy'}: expected uint8 (5 x n, H, W, 3) images, one per label of "
                               f"labels.npy ({len(labels)}); got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        per = len(images) // 5
        out[name] = [TensorSplit(x[i * per:(i + 1) * per], labels[i * per:(i + 1) * per], transforms)
                     for i in range(5)]
    return out
