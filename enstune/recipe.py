"""The recipe: how one model is fine-tuned. Plain frozen data; names are checked against registries elsewhere."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

POLICIES = ("default", "randaugment", "none")  # what Augmentation.policy may be
# auto: bf16 autocast on a GPU that has it, fp16 with a gradient scaler on one that does not, fp32 on a CPU.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
NO_FACTOR = (1.0, 1.0)  # a colour factor range that leaves every image as it is
# Appendix K of the StarSSE paper: a member's colour limits, drawn once before it trains. Brightness, contrast
# and saturation factors lie in [s_min, s_max] with s_min ~ U(0.25, 0.75) and s_max ~ U(2 s_min, 4 s_min);
# the hue shift in [-d, d] with d ~ U(0.01, 0.2).
COLOR_FACTOR_MIN = (0.25, 0.75)
COLOR_FACTOR_SPAN = (2.0, 4.0)
COLOR_HUE_MAX = (0.01, 0.2)
# Independent random streams of a member's seed: turning colour on leaves its lr, weight decay and epochs as drawn.
_HYPER_STREAM, _COLOR_STREAM = 1, 2


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: the dataset's ``default`` (random crop and flip), ``randaugment`` on top, or ``none``;
    and, with any policy but ``none``, colour jitter on top when its limits are set."""

    policy: str = "default"
    ops: int = 2  # RandAugment's N
    magnitude: int = 9  # RandAugment's M
    # Colour jitter (ColorJitter's ranges), each of the four applied to an image with probability 0.5:
    # factor limits of brightness, contrast and saturation ((1, 1): off), the largest hue shift (0: off).
    brightness: tuple[float, float] = NO_FACTOR
    contrast: tuple[float, float] = NO_FACTOR
    saturation: tuple[float, float] = NO_FACTOR
    hue: float = 0.0
    # timm's auto-augment config string ("rand-m9-mstd0.5-inc1", "augmix-m5-w3", "original"; "": none), applied
    # after the crop and flip as timm's create_transform does, in place of the policy's RandAugment.
    auto_augment: str = ""

    @property
    def color(self) -> bool:
        """Whether any colour jitter is on."""
        return (self.brightness, self.contrast, self.saturation) != (NO_FACTOR,) * 3 or self.hue != 0.0


@dataclass(frozen=True)
class Recipe:
    """The ×1 recipe (a study's ``[finetune]``), and, scaled by the multipliers, a cycle's."""

    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # a name of enstune.optim: sgd, adamw
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    # False: no weight decay on 1-D parameters (norm weights, biases), as the Swin and CLIP recipes say.
    decay_norm_and_bias: bool = True
    batch_size: int = 256
    schedule: str = "cosine"  # a name of enstune.schedules
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # when > 0, the warm-up in optimizer steps instead of warmup_epochs
    cycle_warmup: bool = False  # every cycle warms up (the CLIP recipe), not only member 1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0: no clipping
    augment: str = "default"  # Augmentation.policy
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    # timm's auto-augment config string (Augmentation.auto_augment), e.g. "rand-m9-mstd0.5-inc1"; "": none.
    auto_augment: str = ""
    # Colour jitter on top of the policy (Augmentation's brightness, contrast, saturation, hue); off at the defaults.
    color_brightness: tuple[float, float] = NO_FACTOR
    color_contrast: tuple[float, float] = NO_FACTOR
    color_saturation: tuple[float, float] = NO_FACTOR
    color_hue: float = 0.0
    precision: str = "auto"  # one of PRECISIONS
    compile: bool = False  # torch.compile the network for training (minutes of compilation per member process)
    channels_last: bool = True  # convolutional networks on a GPU train in channels-last memory format
    # The optimizer's own settings away from their defaults (enstune.optim), sorted: a trial's, from the study's options.
    optim: tuple[tuple[str, Any], ...] = ()

    @property
    def augmentation(self) -> Augmentation:
        """The training augmentation of this recipe."""
        return Augmentation(self.augment, self.randaugment_ops, self.randaugment_magnitude, self.color_brightness,
                            self.color_contrast, self.color_saturation, self.color_hue, self.auto_augment)

    def warmup(self, steps_per_epoch: int) -> int:
        """Warm-up length in optimizer steps."""
        return self.warmup_steps if self.warmup_steps > 0 else round(self.warmup_epochs * steps_per_epoch)

    def cycle(self, lr_mult: float, epoch_mult: float) -> Recipe:
        """The cycle recipe: lr × lr_mult, epochs × epoch_mult rounded down (at least 1); warm-up only if ``cycle_warmup``."""
        warm = {} if self.cycle_warmup else {"warmup_epochs": 0.0, "warmup_steps": 0}
        return replace(self, lr=self.lr * lr_mult, epochs=max(1, math.floor(self.epochs * epoch_mult)), **warm)


@dataclass(frozen=True)
class Diversity:
    """How each member's recipe departs from the planned one (StarSSE paper, Appendix K): lr, weight decay and
    epochs scaled by factors drawn log-uniformly from ``[low, high]``, and colour limits drawn per member."""

    lr: tuple[float, float] = NO_FACTOR
    weight_decay: tuple[float, float] = NO_FACTOR
    epochs: tuple[float, float] = NO_FACTOR
    color: bool = False

    @property
    def active(self) -> bool:
        """Whether any member's recipe changes."""
        return (self.lr, self.weight_decay, self.epochs) != (NO_FACTOR,) * 3 or self.color

    def apply(self, recipe: Recipe, seed: int) -> Recipe:
        """The recipe of the member with seed ``seed`` (the same seed, the same draws); ``recipe`` when inactive."""
        if not self.active:
            return recipe
        rng = np.random.default_rng([seed, _HYPER_STREAM])
        drawn = replace(recipe, lr=recipe.lr * _log_uniform(rng, *self.lr),
                        weight_decay=recipe.weight_decay * _log_uniform(rng, *self.weight_decay),
                        epochs=_epochs(rng, recipe.epochs, *self.epochs))
        return draw_color(drawn, seed) if self.color else drawn


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _epochs(rng: np.random.Generator, epochs: int, low: float, high: float) -> int:
    """Whole epochs log-uniform on [low × epochs, high × epochs] as Optuna draws a log int (at least 1)."""
    first = max(1, math.ceil(low * epochs - 1e-9))  # the tolerance: 0.72 × 25 is 17.999…
    last = max(first, math.floor(high * epochs + 1e-9))
    drawn = round(math.exp(rng.uniform(math.log(first - 0.5), math.log(last + 0.5))))
    return min(max(drawn, first), last)


def draw_color(recipe: Recipe, seed: int) -> Recipe:
    """``recipe`` with colour limits drawn from Appendix K's distributions, reproducibly for ``seed``."""
    rng = np.random.default_rng([seed, _COLOR_STREAM])

    def factor() -> tuple[float, float]:
        low = float(rng.uniform(*COLOR_FACTOR_MIN))
        return low, float(low * rng.uniform(*COLOR_FACTOR_SPAN))

    brightness, contrast, saturation = factor(), factor(), factor()
    return replace(recipe, color_brightness=brightness, color_contrast=contrast, color_saturation=saturation,
                   color_hue=float(rng.uniform(*COLOR_HUE_MAX)))


# Member keys, version 1: the recipe fields every key holds, whatever their value. Any other field
# (one that does not change what a member computes bar rounding, such as precision, or one added
# since) enters a key only away from its default, so members cached before it keep their keys; a
# field added later needs a default that trains as before, and nothing else.
KEY_FIELDS = frozenset({
    "augment", "batch_size", "betas", "cycle_warmup", "decay_norm_and_bias", "epochs", "grad_clip", "label_smoothing",
    "lr", "momentum", "optimizer", "randaugment_magnitude", "randaugment_ops", "schedule", "warmup_epochs",
    "warmup_steps", "weight_decay"})


def keyed_fields(recipe: Recipe) -> dict[str, Any]:
    """The recipe's fields for a content key: ``KEY_FIELDS`` always, any other only away from its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(recipe)}
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k in KEY_FIELDS or v != defaults[k]}
