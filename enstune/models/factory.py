"""Building backbones by name, from scratch or from a local checkpoint file, and reading their interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from enstune.errors import EnstuneError
from enstune.models._registry import FAMILIES, resolve
from enstune.models.checkpoint import head_prefixes, load_checkpoint
from enstune.preprocess import Preprocess
from enstune.settings import Setting

HEADS = ("new", "zeroshot")


def list_models() -> list[str]:
    """Names of enstune's own nets (timm's names and ``open_clip:NAME`` work too)."""
    return sorted(name for key in FAMILIES for name in FAMILIES.get(key).names())


def create_model(name: str, num_classes: int, drop_path_rate: float | None = None) -> nn.Module:
    """A freshly initialised network with a ``num_classes`` head; ``drop_path_rate``: its stochastic depth (None:
    the network's own default), for a family that declares the setting (timm's)."""
    family, arch = resolve(name)
    if drop_path_rate is None:
        return family.create(arch, num_classes)
    if "drop_path_rate" not in family.settings:
        raise EnstuneError(f"drop_path_rate needs a timm network (stochastic depth); {name} takes none")
    return family.create(arch, num_classes, drop_path_rate=drop_path_rate)


def model_settings(name: str) -> dict[str, Setting]:
    """What model ``name``'s family reads from ``task.options``."""
    return resolve(name)[0].settings


def from_pretrained(name: str, path: Path, num_classes: int, *, prefix: str = "", head: str = "new",
                    class_names: Sequence[str] | None = None) -> nn.Module:
    """The backbone in file ``path`` (keys under ``prefix``) with a new ``num_classes`` head: random, or zero-shot."""
    if head not in HEADS:
        raise EnstuneError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    family, arch = resolve(name)
    if head not in family.heads:
        raise EnstuneError(f"head={head!r} needs a CLIP model (open_clip:NAME); {name} takes head='new'")
    state = load_checkpoint(path, prefix)
    return family.load(arch, state, num_classes, source=str(path), head=head, class_names=class_names)


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classification head (timm's ``pretrained_cfg['classifier']``)."""
    return head_prefixes(model)[0]


def preprocess(model: nn.Module) -> Preprocess | None:
    """The input ``model`` expects, from its own configuration; None for nets that do not read images."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        return None
    family, _ = resolve(arch)
    return family.preprocess(model)


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
