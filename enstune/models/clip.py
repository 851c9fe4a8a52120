"""CLIP image towers (``open_clip:NAME``) with a classification head: a new one, or CLIP's zero-shot classifier.

The network is open_clip's ``model.visual``, whose output is the projected image embedding (the
class token after ``ln_post``, times ``proj``: the space text embeddings live in, ``embed_dim``
wide, not L2-normalised). The head normalises that embedding and applies a linear map, as model
soups' and WiSE-FT's ``ClassificationHead(normalize=True)`` do (Wortsman et al. 2022). For the
zero-shot head the weight is the normalised class text embeddings times ``exp(logit_scale)`` (the
scale folded in), the bias zero, so its logits are exactly CLIP's zero-shot logits. A new head is
the same module at nn.Linear's initialisation, so every member rebuilds from ``create_model``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from enstune.errors import EnstuneError
from enstune.models._registry import FAMILIES, Family
from enstune.models.checkpoint import first_line, load_body
from enstune.preprocess import Preprocess
from enstune.settings import Setting

PREFIX = "open_clip"
# The keys a state dict of OpenAI's TorchScript CLIP release carries besides the weights.
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


class NormalizedLinear(nn.Linear):
    """A linear map of the L2-normalised input (its input, as hooks see it, is the raw embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(x, dim=-1))


class CLIPClassifier(nn.Module):
    """open_clip's image tower and a ``head`` on its embedding, with timm's head interface."""

    def __init__(self, arch: str, visual: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.num_features = embed_dim
        self.head = NormalizedLinear(embed_dim, num_classes)
        self.pretrained_cfg = {"architecture": f"{PREFIX}:{arch}", "classifier": "head", "num_classes": num_classes}
        # One stage per transformer block, as timm's ViTs describe theirs (freezing N stages freezes N blocks).
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", [])
        width = getattr(getattr(visual, "conv1", None), "out_channels", embed_dim)
        reduction = getattr(visual, "patch_size", (1,))[0]
        self.feature_info = [{"num_chs": width, "reduction": reduction, "module": f"visual.transformer.resblocks.{i}"}
                             for i in range(len(blocks))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The projected image embedding fed to the head."""
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out  # towers configured with output_tokens

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits from the embedding."""
        return self.head(x)

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's interface)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one."""
        self.head = NormalizedLinear(self.num_features, num_classes)
        self.pretrained_cfg["num_classes"] = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClipFamily(Family):
    """open_clip's model configs (``open_clip.list_models()``), built without downloading anything."""

    settings = {"head": Setting("new", "the head members start from: new (random) or zeroshot (CLIP's zero-shot "
                                "classifier from the class names)", choices=("new", "zeroshot"))}

    def has(self, arch: str) -> bool:
        import open_clip

        return arch in open_clip.list_models()

    def create(self, arch: str, num_classes: int) -> nn.Module:
        return _classifier(arch, _build(arch), num_classes)

    def load(self, arch: str, state: dict[str, torch.Tensor], num_classes: int, *, source: str, head: str,
             class_names: Sequence[str] | None) -> nn.Module:
        if head == "zeroshot" and (class_names is None or len(class_names) != num_classes):
            got = "none" if class_names is None else len(class_names)
            raise EnstuneError(f"head='zeroshot' needs one name per class: {num_classes} class names, got {got}")
        clip = _build(arch)
        model = _classifier(arch, clip, num_classes)  # the head drawn as create() draws it
        name = f"{PREFIX}:{arch}"
        state = _to_open_clip(arch, state, clip, source)
        # A new head needs the image tower only; the zero-shot head needs the text tower and logit scale too.
        load_body(clip, state, source=source, name=name,
                  optional=(lambda key: not key.startswith("visual.")) if head == "new" else (lambda key: False))
        if head == "zeroshot":
            assert class_names is not None
            warn_if_codes(class_names)
            weight = _zeroshot_weight(arch, clip, class_names)
            with torch.no_grad():
                model.head.weight.copy_(weight)
                model.head.bias.zero_()
        return model

    def preprocess(self, model: nn.Module) -> Preprocess:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        height, width = (size, size) if isinstance(size, int) else size
        # open_clip's evaluation transform resizes the short side to the size and centre-crops it
        # (resize_mode "shortest"): crop_pct 1.0. "random" interpolation is a training option; it evaluates bicubic.
        return Preprocess(input_size=(3, height, width), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                          interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
                          crop_pct=1.0)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    # open_clip logs on the root logger; a filter there sees only records logged on it directly.
    def not_open_clip(record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname

    logging.root.addFilter(not_open_clip)
    try:
        yield
    finally:
        logging.root.removeFilter(not_open_clip)


def _build(arch: str) -> nn.Module:
    import open_clip

    # open_clip warns that the model is randomly initialised: here that is the point.
    with _quiet_open_clip():
        return open_clip.create_model(arch, pretrained=None)


def _classifier(arch: str, clip: nn.Module, num_classes: int) -> CLIPClassifier:
    import open_clip

    return CLIPClassifier(arch, clip.visual, open_clip.get_model_config(arch)["embed_dim"], num_classes)


def _to_open_clip(arch: str, state: dict[str, torch.Tensor], clip: nn.Module,
                  source: str) -> dict[str, torch.Tensor]:
    """``state`` in open_clip's layout for ``clip``, through open_clip's own conversions (as its load_checkpoint)."""
    import open_clip
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = dict(state)
    if all(key in state for key in OPENAI_METADATA):
        for key in OPENAI_METADATA:
            del state[key]
        # OpenAI trained with QuickGELU; the activation is not in the weights, so the name must say it.
        if not open_clip.get_model_config(arch).get("quick_gelu", False):
            raise EnstuneError(f"checkpoint {source} is OpenAI's CLIP release, trained with QuickGELU: name the "
                               f"model {PREFIX}:{arch}-quickgelu, not {PREFIX}:{arch}")
    try:
        state = convert_state_dict(clip, state)  # third-party releases (MobileCLIP)
        if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        if "logit_scale" in state and state["logit_scale"].ndim != clip.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
        resize_pos_embed(state, clip)
        resize_text_pos_embed(state, clip)
    except (AssertionError, RuntimeError, ValueError, KeyError) as exc:
        raise EnstuneError(f"checkpoint {source} does not fit {PREFIX}:{arch}: open_clip's conversion failed "
                           f"({type(exc).__name__}: {first_line(exc)})") from None
    return state


# A WordNet ID (n01440764), or a name with no letters or ending in a long number (001, class_12, c0042).
_CODE = re.compile(r"n\d{8}|[^A-Za-z]*|[A-Za-z]{0,8}[_\-]?\d{2,}")


def looks_like_codes(class_names: Sequence[str]) -> list[str]:
    """The class names that look like WordNet IDs or folder codes rather than words."""
    return [name for name in class_names if _CODE.fullmatch(name.strip())]


def warn_if_codes(class_names: Sequence[str]) -> None:
    """One warning when CLIP's prompts would read codes ("a photo of a n01440764.") instead of class names."""
    codes = looks_like_codes(class_names)
    if codes:
        warnings.warn(f"{len(codes)} of {len(class_names)} class names look like WordNet IDs or folder codes "
                      f"(e.g. {codes[0]!r}): the zero-shot head reads them as words; give the dataset readable "
                      f"names (for ImageNet, the dataset imagenet names its classes as open_clip does)", stacklevel=2)


def _zeroshot_weight(arch: str, clip: nn.Module, class_names: Sequence[str]) -> torch.Tensor:
    """exp(logit_scale) × the normalised mean text embedding of each class over CLIP's ImageNet prompts."""
    import open_clip

    # 80 prompts per class through the text tower: minutes on a CPU for a hundred classes, seconds on a GPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    training = clip.training
    clip.eval().to(device)
    try:
        embeddings = open_clip.build_zero_shot_classifier(
            clip, open_clip.get_tokenizer(arch), list(class_names), open_clip.OPENAI_IMAGENET_TEMPLATES,
            num_classes_per_batch=10, device=device)
        with torch.no_grad():
            return (clip.logit_scale.exp() * embeddings.T).float().cpu()
    finally:
        clip.train(training).to("cpu")


FAMILIES.add(PREFIX, ClipFamily())
