"""timm's networks by name, loaded through the architecture's own checkpoint filter."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from enstune.errors import EnstuneError
from enstune.models._registry import FAMILIES, Family
from enstune.models.checkpoint import first_line
from enstune.preprocess import Preprocess


class TimmFamily(Family):
    """Any ``timm.list_models()`` name; foreign layouts (the Swin and ConvNeXt releases, …) through timm's filters."""

    def has(self, arch: str) -> bool:
        import timm

        return timm.is_model(arch)

    def create(self, arch: str, num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=num_classes)

    def convert(self, arch: str, state: dict[str, torch.Tensor], model: nn.Module,
                source: str) -> dict[str, torch.Tensor]:
        # timm's convention: the module defining an architecture exposes checkpoint_filter_fn(state, model),
        # the filter its factory hands build_model_with_cfg for pretrained weights; resnet has none.
        import timm

        module = importlib.import_module(timm.models.model_entrypoint(arch).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is None:
            return state
        try:
            return filter_fn(state, model)
        except (KeyError, RuntimeError, ValueError, AttributeError, IndexError) as exc:
            # Filters assume their release's keys; on another file they fail anywhere.
            raise EnstuneError(f"checkpoint {source} does not fit {arch}: timm's {module.__name__}."
                               f"checkpoint_filter_fn failed ({type(exc).__name__}: {first_line(exc)})") from None

    def preprocess(self, model: nn.Module) -> Preprocess:
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        return Preprocess(input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                          interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]))


FAMILIES.add("timm", TimmFamily())
