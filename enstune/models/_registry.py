"""Backbone families: how one library builds a network, fits a checkpoint into it and describes its input.

Family modules import this module, never ``enstune.models`` itself, so the package can import them
for registration without a cycle (timm's ``_registry`` pattern).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from enstune.errors import EnstuneError
from enstune.models.checkpoint import load_body
from enstune.preprocess import Preprocess
from enstune.registry import Registry
from enstune.settings import Setting

# Bare names are looked up in this order: enstune's own nets shadow a library's of the same name.
BARE_NAME_ORDER = ("enstune", "timm")


class Family(ABC):
    """Builds, loads and describes one library's networks; ``arch`` is the name without ``family:``.

    The contract: ``has``, ``create`` and ``preprocess`` are the family's own (a family that leaves
    one out cannot be instantiated, so it fails where it registers); the networks it creates have
    timm's head interface (``get_classifier``, ``reset_classifier``, ``forward_features``,
    ``forward_head``, ``pretrained_cfg["classifier"]``) and, where stages can be frozen, ``feature_info``.
    """

    # What the family reads from ``task.options`` (e.g. CLIP's ``head``); the heads ``load`` can start from
    # are its ``head`` setting's choices, else only a new one.
    settings: dict[str, Setting] = {}

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads ``load`` can start from."""
        return self.settings["head"].choices if "head" in self.settings else ("new",)

    @abstractmethod
    def has(self, arch: str) -> bool:
        """Whether ``arch`` names a network of this family."""

    def names(self) -> list[str]:
        """The names worth listing (only enstune's own nets: libraries list theirs)."""
        return []

    @abstractmethod
    def create(self, arch: str, num_classes: int) -> nn.Module:
        """A freshly initialised network with a ``num_classes`` head (a family that declares ``drop_path_rate`` also
        takes it here, where set)."""

    def convert(self, arch: str, state: dict[str, torch.Tensor], model: nn.Module,
                source: str) -> dict[str, torch.Tensor]:
        """``state`` renamed to ``model``'s keys (the library's filter for foreign layouts)."""
        return state

    def load(self, arch: str, state: dict[str, torch.Tensor], num_classes: int, *, source: str, head: str,
             class_names: Sequence[str] | None) -> nn.Module:
        """The network with ``state`` as its body and a new ``num_classes`` head."""
        model = self.create(arch, num_classes)
        load_body(model, self.convert(arch, state, model, source), source=source, name=arch)
        return model

    @abstractmethod
    def preprocess(self, model: nn.Module) -> Preprocess | None:
        """The input ``model`` expects, from its own configuration; None only for nets that do not read images."""


FAMILIES: Registry[Family] = Registry("model family")


def resolve(name: str) -> tuple[Family, str]:
    """The family of model ``name`` and the name within it (``open_clip:ViT-B-32`` → clip, ``ViT-B-32``)."""
    prefix, colon, arch = name.partition(":")
    if colon:
        family = FAMILIES.get(prefix)
        if not family.has(arch):
            raise EnstuneError(f"unknown model {name!r}: {prefix} has no model {arch!r}")
        return family, arch
    for key in BARE_NAME_ORDER:
        if key in FAMILIES and FAMILIES.get(key).has(name):
            return FAMILIES.get(key), name
    own = [n for key in FAMILIES for n in FAMILIES.get(key).names()]
    raise EnstuneError(f"unknown model {name!r}; enstune has {', '.join(own) or 'no nets'}, "
                       "and timm's model names and open_clip:NAME work too")
