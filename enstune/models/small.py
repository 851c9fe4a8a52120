"""Small networks for the embedded demo, with timm's head interface."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from enstune.models._registry import FAMILIES, Family
from enstune.registry import Registry

NETS: Registry[Callable[[int], nn.Module]] = Registry("enstune net")


class MLP(nn.Module):
    """A BatchNorm MLP on flattened images; ``forward_features`` is the embedding."""

    pretrained_cfg = {"classifier": "head"}

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            # A slow running average: BN statistics re-estimated from a hundred labelled images at
            # torch's default momentum (0.1) are noisy enough to make members that barely moved
            # disagree, and an ensemble of such members gains from averaging that noise alone.
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.BatchNorm1d(width, momentum=0.03),
                       nn.ReLU()]
        self.features = nn.Sequential(*layers)
        # timm's description of the stages: each block ends at its ReLU (used to freeze stages)
        self.feature_info = [{"num_chs": width, "module": f"features.{3 * (i + 1)}"} for i in range(depth)]
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding fed to the head."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits from the embedding."""
        return self.head(x)

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's interface)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one."""
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@NETS.register("demo_mlp")
def demo_mlp(num_classes: int) -> nn.Module:
    """The demo network: 8×8 digits → 512 → 512 → 512 → classes."""
    # Measured on the demo task: at 256 × 2 the best StarSSE only tied Local DE on validation.
    return MLP(64, 512, 3, num_classes)


class SmallFamily(Family):
    """The nets registered in ``NETS``; their inputs are not images at a resolution, so no preprocessing."""

    def has(self, arch: str) -> bool:
        return arch in NETS

    def names(self) -> list[str]:
        return NETS.names()

    def create(self, arch: str, num_classes: int) -> nn.Module:
        model = NETS.get(arch)(num_classes)
        # timm's record of what the network is; preprocess() finds the family from it.
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "architecture": arch}
        return model

    def preprocess(self, model: nn.Module) -> None:
        """None: these nets read feature vectors, not images at a resolution."""
        return None


FAMILIES.add("enstune", SmallFamily())
