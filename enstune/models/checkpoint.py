"""Checkpoint files: the layouts pre-trained weights come in, and a strict fit that names what differs."""

from __future__ import annotations

import argparse
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enstune.errors import EnstuneError

# Where a file keeps its weights when it keeps more than weights: training scripts and DDP
# ("state_dict"), BYOL ("model_state"), the Swin and DeiT releases ("model").
LAYOUT_KEYS = ("state_dict", "model_state", "model")
# Wrappers that prefix every key, in either order: DDP and torch.compile (as timm's clean_state_dict).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 3  # keys named per kind of misfit


def load_checkpoint(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, unwrapped from its layout; keys under ``prefix`` only, with it stripped."""
    path = Path(path)
    if not path.is_file():
        raise EnstuneError(f"pre-trained checkpoint not found: {path}")
    obj = _read(path)
    state = _unwrap(obj)
    if state is None:
        found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise EnstuneError(f"checkpoint {path} holds no state dict (tensors by name, at the top or under "
                           f"{', '.join(LAYOUT_KEYS)}); found {found}")
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if not prefix:
        return state
    prefix = _strip_wrappers(prefix if prefix.endswith(".") else prefix + ".")
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not inner:
        raise EnstuneError(f"no key of checkpoint {path} starts with prefix {prefix!r} (keys: {_some(state)})")
    return inner


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise EnstuneError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    if _is_torchscript(path):
        # Reading TorchScript runs code from the file; weights_only=True refuses it, and so do we.
        raise EnstuneError(f"checkpoint {path} is a TorchScript archive, which only loads by running its code; "
                           "save its state dict instead: torch.save(torch.jit.load(file).state_dict(), new_file)")
    try:
        # argparse.Namespace (a training script's arguments) is plain data, as timm's loader allows.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a torch.save zip file: report the unpickling error
            unsafe = []
        if not unsafe:
            raise EnstuneError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
        raise EnstuneError(f"checkpoint {path} pickles objects other than tensors ({', '.join(unsafe[:5])}), "
                           "which are never unpickled here; save its state dict instead") from None
    except Exception as exc:  # noqa: BLE001
        raise EnstuneError(f"cannot read checkpoint {path}: {first_line(exc)}") from None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any) -> dict[str, torch.Tensor] | None:
    if _is_state(obj):
        return obj
    if isinstance(obj, dict):
        for key in LAYOUT_KEYS:
            if _is_state(obj.get(key)):
                return obj[key]
    return None


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        for wrapper in WRAPPER_PREFIXES:
            key = key.removeprefix(wrapper)
    return key


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classification head(s) (timm's ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier", "head")
    return (heads,) if isinstance(heads, str) else tuple(heads)


def load_body(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, name: str,
              optional: Callable[[str], bool] = lambda key: False) -> None:
    """Load ``state`` into ``model`` but its head; every other key of either must match (``optional`` may be absent)."""
    heads = tuple(p + "." for p in head_prefixes(model))
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    own = model.state_dict()
    # A BatchNorm batch counter is not a weight, and files older than torch 0.4.1 lack it.
    missing = [k for k in own if k not in state and not k.startswith(heads) and not optional(k)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
            prefix = _prefix_hint(missing, unexpected)
            if prefix:
                parts.append(f"the model's keys are in the file under {prefix + '.'!r}: "
                             f"set task.checkpoint_prefix = {prefix!r}")
        if reshaped:
            shapes = ", ".join(f"{k}: {_shape(state[k])} in the file, {_shape(own[k])} in the model"
                               for k in reshaped[:SHOWN])
            parts.append(f"{len(reshaped)} of another shape ({shapes}{', …' if len(reshaped) > SHOWN else ''})")
        raise EnstuneError(f"checkpoint {source} does not fit {name}: {', '.join(parts)}")
    model.load_state_dict(state, strict=False)


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """The first key component under which the file holds every missing key ("backbone" of solo-learn), or ""."""
    if not missing:
        return ""
    found = set(unexpected)
    for prefix in dict.fromkeys(k.split(".", 1)[0] for k in unexpected if "." in k):
        if all(f"{prefix}.{k}" in found for k in missing):
            return prefix
    return ""


def _some(keys: Any) -> str:
    keys = list(keys)
    return ", ".join(keys[:SHOWN]) + (", …" if len(keys) > SHOWN else "")


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (errors here are one line)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
