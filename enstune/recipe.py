"""The recipe: how one model is fine-tuned. Plain frozen data; names are checked against registries elsewhere."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


POLICIES = ("default", "randaugment", "none")  # what Augmentation.policy may be
# auto: bf16 autocast on a GPU that has it, fp16 with a gradient scaler on one that does not, fp32 on a CPU.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: the dataset's ``default`` (random crop and flip), ``randaugment`` on top, or ``none``."""

    policy: str = "default"
    ops: int = 2  # RandAugment's N
    magnitude: int = 9  # RandAugment's M


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
    precision: str = "auto"  # one of PRECISIONS
    compile: bool = False  # torch.compile the network for training (minutes of compilation per member process)
    channels_last: bool = True  # convolutional networks on a GPU train in channels-last memory format

    @property
    def augmentation(self) -> Augmentation:
        """The training augmentation of this recipe."""
        return Augmentation(self.augment, self.randaugment_ops, self.randaugment_magnitude)

    def warmup(self, steps_per_epoch: int) -> int:
        """Warm-up length in optimizer steps."""
        return self.warmup_steps if self.warmup_steps > 0 else round(self.warmup_epochs * steps_per_epoch)

    def cycle(self, lr_mult: float, epoch_mult: float) -> Recipe:
        """The cycle recipe: lr × lr_mult, epochs × epoch_mult rounded down (at least 1); warm-up only if ``cycle_warmup``."""
        warm = {} if self.cycle_warmup else {"warmup_epochs": 0.0, "warmup_steps": 0}
        return replace(self, lr=self.lr * lr_mult, epochs=max(1, math.floor(self.epochs * epoch_mult)), **warm)
