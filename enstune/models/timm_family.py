"""timm's networks by name, loaded through the architecture's own checkpoint filter."""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn

from enstune.errors import EnstuneError
from enstune.models._registry import FAMILIES, Family
from enstune.models.checkpoint import first_line
from enstune.preprocess import Preprocess
from enstune.settings import Setting

# Unset: a network's own default, its entry function's (0.1 for Swin, 0 for ResNets). A rate of 1 drops every path.
DROP_PATH_RATE = Setting(None, "timm's stochastic depth while training (unset: the network's own, 0.1 for Swin-T)",
                         low=0.0, high=0.99, of=float)


class TimmFamily(Family):
    """Any ``timm.list_models()`` name; foreign layouts (the Swin and ConvNeXt releases, …) through timm's filters."""

    def has(self, arch: str) -> bool:
        import timm

        return timm.is_model(arch)

    settings = {"drop_path_rate": DROP_PATH_RATE}

    def create(self, arch: str, num_classes: int, drop_path_rate: float | None = None) -> nn.Module:
        import timm

        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)

    def convert(self, arch: str, state: dict[str, torch.Tensor], model: nn.Module,
                source: str) -> dict[str, torch.Tensor]:
        # timm's convention: the module defining an architecture exposes checkpoint_filter_fn(state, model),
        # the filter its factory hands build_model_with_cfg for pretrained weights; resnet has none.
        import timm

        _warn_default_config(arch)
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


def _warn_default_config(arch: str) -> None:
    """One line when a bare name (``resnet50``) reads a file at timm's default config while torchvision's exists.

    The name picks the input (interpolation, crop) the file is evaluated at: a bare ``resnet50``
    is timm's ``resnet50.a1_in1k`` (bicubic, crop 0.95), not the bilinear, 0.875 crop that
    torchvision's weights, the paper's among them, were trained and evaluated at.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if "." in arch:
        return
    tv = timm.list_pretrained(f"{arch}.tv*")
    cfg = get_pretrained_cfg(arch)
    if not tv or cfg is None or (cfg.tag or "").startswith("tv"):
        return
    suggest = f"{arch}.tv_in1k" if f"{arch}.tv_in1k" in tv else tv[-1]
    warnings.warn(f"task.model {arch!r} takes timm's default pretrained config {arch}.{cfg.tag} "
                  f"({cfg.interpolation}, crop {cfg.crop_pct}) for its input; for a torchvision checkpoint name "
                  f"it {suggest!r} ({get_pretrained_cfg(suggest).interpolation}, crop "
                  f"{get_pretrained_cfg(suggest).crop_pct})", stacklevel=3)


FAMILIES.add("timm", TimmFamily())
