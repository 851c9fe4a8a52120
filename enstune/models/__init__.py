"""Backbones: small registered nets for the demo, everything else from timm's factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from enstune.errors import EnstuneError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(num_classes) -> nn.Module`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the nets registered here (timm's names work too)."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised network with a ``num_classes`` head."""
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes)
    import timm

    if not timm.is_model(name):
        raise EnstuneError(f"unknown model {name!r}; enstune has {', '.join(list_models())} and timm's models")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classification head (timm's ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("classifier", "head")


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (a bare state dict or ``{"state_dict": ...}``)."""
    if not path.is_file():
        raise EnstuneError(f"pre-trained checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise EnstuneError(f"cannot read checkpoint {path}: {exc}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise EnstuneError(f"checkpoint {path} holds no state dict")
    return state


def from_pretrained(name: str, path: Path, num_classes: int) -> nn.Module:
    """Load a pre-trained backbone and give it a new, randomly initialised ``num_classes`` head."""
    model = create_model(name, num_classes)
    head = classifier_prefix(model) + "."
    state = {k: v for k, v in load_checkpoint(path).items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise EnstuneError(
            f"checkpoint {path} does not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected keys"
        )
    return model


from enstune.models import small  # noqa: E402,F401  (registration)


def stage_modules(model: nn.Module, stages: int) -> list[nn.Module]:
    """The leaf modules of the first ``stages`` stages (timm's ``feature_info``), in order."""
    names = [info["module"] for info in getattr(model, "feature_info", [])]
    if stages > len(names):
        raise EnstuneError(f"cannot freeze {stages} stages: the model has {len(names)}")
    if stages <= 0:
        return []
    last = names[stages - 1]
    out, seen_last = [], False
    for name, module in model.named_modules():
        inside = name == last or name.startswith(last + ".")
        if seen_last and not inside:
            break
        seen_last = seen_last or inside
        if not any(True for _ in module.children()):
            out.append(module)
    return out
