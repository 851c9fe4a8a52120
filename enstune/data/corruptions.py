"""Out-of-distribution test sets: corruption families in the spirit of CIFAR-100-C, five severities.

The families act on images in the [0, 1] pixel range, each with one parameter per severity;
a task picks the severity tables that suit its images. Real runs read the published
CIFAR-100-C arrays instead (``load_cifar_c``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from enstune.data._base import Split
from enstune.errors import EnstuneError

Corruption = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
_FAMILIES: dict[str, Corruption] = {}


def _family(name: str) -> Callable[[Corruption], Corruption]:
    def add(fn: Corruption) -> Corruption:
        _FAMILIES[name] = fn
        return fn

    return add


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
    return sorted(_FAMILIES)


def corrupt(split: Split, tables: dict[str, Sequence[float]], seed: int = 0) -> dict[str, list[Split]]:
    """``split`` (pixels in [0, 1], on the CPU) under each family at each severity of ``tables``."""
    out: dict[str, list[Split]] = {}
    for name, params in tables.items():
        g = torch.Generator().manual_seed(seed)
        out[name] = [Split(_FAMILIES[name](split.x, p, g), split.y) for p in params]
    return out


def load_cifar_c(root: Path, normalise: Callable[[torch.Tensor], torch.Tensor],
                 families: Sequence[str] | None = None) -> dict[str, list[Split]]:
    """The published CIFAR-100-C arrays (``<family>.npy``, 5 × 10000 images, ``labels.npy``) under ``root``."""
    root = Path(root)
    if not (root / "labels.npy").is_file():
        raise EnstuneError(f"CIFAR-100-C not found: expected {root / 'labels.npy'} and <corruption>.npy files")
    labels = torch.from_numpy(np.load(root / "labels.npy")).long()
    names = families or sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")
    out: dict[str, list[Split]] = {}
    for name in names:
        images = np.load(root / f"{name}.npy", mmap_mode="r")
        per = len(images) // 5
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255)
        out[name] = [Split(normalise(x[i * per:(i + 1) * per]), labels[i * per:(i + 1) * per]) for i in range(5)]
    return out
