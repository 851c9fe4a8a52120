"""The input a backbone expects: resolution, normalization, interpolation and crop fraction."""

from __future__ import annotations

from dataclasses import dataclass


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What travels with a backbone's weights (timm's data config, open_clip's preprocess config)."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # channels, height, width
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"  # "bilinear" or "bicubic"
    crop_pct: float = 0.875  # evaluation: resize to size / crop_pct, then centre-crop to size

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the network's input."""
        return self.input_size[1], self.input_size[2]
