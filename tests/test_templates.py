"""The templates of the StarSSE paper's experiments: one per row of Table 2 (and CLIP) and method.

The tables below are the specification, written as the paper prints them: Table 2's ×1 recipe
(epochs, initial lr, weight decay) and Table 3's multipliers (lr, epochs) of the more local, SSE
optimal, StarSSE optimal and more semi-local experiments; CLIP's recipe is Appendix B's text.
Nothing here trains or reads a checkpoint.
"""

from __future__ import annotations

import importlib.resources
import math
from typing import NamedTuple

import pytest

from enstune.checks import load_checked
from enstune.config import list_templates

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET, SWIN, CLIP = "resnet50.tv_in1k", "swin_tiny_patch4_window7_224.ms_in1k", "open_clip:ViT-B-32-quickgelu"


class Row(NamedTuple):
    dataset: str
    model: str
    optimizer: str
    epochs: int  # Table 2
    lr: float
    wd: float | None  # None: the paper does not state it (CLIP)
    more_local: tuple[float, float]  # Table 3: (lr multiplier, epochs multiplier)
    sse_optimal: tuple[float, float]
    starsse_optimal: tuple[float, float]
    more_semi_local: tuple[float, float]


ROWS = {
    # SV ResNet-50
    "cifar10": Row("cifar10", RESNET, "sgd", 51, 2.5e-2, 2e-5, (0.25, 1), (2, 0.25), (2, 0.5), (2, 2)),
    "cifar100": Row("cifar100", RESNET, "sgd", 25, 5e-3, 5e-4, (1, 1), (2, 1), (4, 1), (8, 4)),
    "sun397": Row("sun397", RESNET, "sgd", 256, 5e-4, 5e-4, (0.5, 1), (32, 0.125), (32, 0.125), (32, 1)),
    "chestx": Row("chestx", RESNET, "sgd", 8, 2.5e-2, 5e-4, (0.25, 1), (4, 2), (2, 2), (8, 4)),  # Appendix N
    "clipart": Row("clipart", RESNET, "sgd", 19, 2.5e-2, 5e-4, (0.25, 0.5), (1, 0.5), (2, 0.5), (4, 2)),
    # SSL (BYOL) ResNet-50
    "byol-cifar10": Row("cifar10", RESNET, "sgd", 25, 5e-2, 1e-4, (0.5, 1), (1, 1), (2, 1), (4, 4)),
    "byol-cifar100": Row("cifar100", RESNET, "sgd", 25, 5e-2, 1e-4, (0.25, 1), (2, 0.5), (4, 0.5), (4, 4)),
    "byol-sun397": Row("sun397", RESNET, "sgd", 16, 1e-1, 1e-4, (0.5, 1), (1, 1), (2, 1), (4, 8)),
    "byol-chestx": Row("chestx", RESNET, "sgd", 8, 2e-1, 5e-4, (0.5, 1), (1, 1), (1, 2), (2, 4)),
    "byol-clipart": Row("clipart", RESNET, "sgd", 19, 1e-1, 2e-5, (0.5, 0.5), (4, 0.5), (4, 0.5), (8, 2)),
    # SV Swin-T
    "swint-cifar100": Row("cifar100", SWIN, "adamw", 102, 1e-4, 2.5e-1, (0.5, 0.25), (2, 0.25), (4, 0.5), (4, 1)),
    "swint-sun397": Row("sun397", SWIN, "adamw", 256, 2.5e-5, 5e-2, (1, 1), (16, 0.125), (16, 0.25), (16, 1)),
    # CLIP ViT-B/32 (Section 8, Appendix B)
    "clip-imagenet": Row("imagenet", CLIP, "adamw", 11, 1.23e-5, None, (1, 0.25), (2, 1), (2, 1), (6, 1)),
}
CYCLIC = {"starsse": "starsse", "sse": "sse"}  # template prefix -> enstune method
BASELINES = {"localde": "local_de", "globalde": "global_de"}
VAL_FRACTION = {"cifar10": 0.1, "cifar100": 0.1, "sun397": 0.2, "imagenet": 0.02, "chestx": 0.2, "clipart": 0.2}


def methods(row: str) -> dict[str, str]:
    """Template prefix -> method of a row's templates; CLIP has no Global DE (Section 8)."""
    both = {**CYCLIC, **BASELINES}
    return {k: v for k, v in both.items() if not (row == "clip-imagenet" and k == "globalde")}


PAIRS = [(row, prefix) for row in ROWS for prefix in methods(row)]


@pytest.mark.parametrize("row", ROWS)
def test_each_row_has_its_templates(row):
    names = set(list_templates())
    assert {f"{prefix}-{row}" for prefix in methods(row)} <= names


def test_clip_has_no_global_de():
    assert "globalde-clip-imagenet" not in list_templates()


@pytest.mark.parametrize("row, prefix", PAIRS)
def test_template_loads_with_the_rows_method_task_and_recipe(row, prefix):
    spec = load_checked(f"{prefix}-{row}")
    r = ROWS[row]
    assert spec.method == methods(row)[prefix] and spec.members == 5
    assert (spec.finetune.epochs, spec.finetune.lr) == (r.epochs, r.lr)
    if r.wd is not None:
        assert spec.finetune.weight_decay == r.wd
    assert spec.finetune.optimizer == r.optimizer
    assert spec.task.dataset == r.dataset and spec.task.model == r.model
    assert spec.task.val_fraction == VAL_FRACTION[r.dataset]
    # the baselines and SSE differ from the row's StarSSE template in method and search only
    star = load_checked(f"starsse-{row}")
    assert spec.task == star.task and spec.finetune == star.finetune


@pytest.mark.parametrize("row", ROWS)
def test_cycle_search_spans_table_3(row):
    r = ROWS[row]
    points = [r.more_local, r.sse_optimal, r.starsse_optimal, r.more_semi_local]
    for prefix in CYCLIC:
        spec = load_checked(f"{prefix}-{row}")
        lrs, eps = spec.space["lr_mult"].choices, spec.space["epoch_mult"].choices
        assert set(spec.space) == {"lr_mult", "epoch_mult"}
        for lr_mult, epoch_mult in points:
            assert lr_mult in lrs and epoch_mult in eps, (prefix, lr_mult, epoch_mult)
        # ordered from the more local end to the more semi-local end, no duplicate
        assert list(lrs) == sorted(set(lrs)) and list(eps) == sorted(set(eps))
        assert spec.sampler == "tpe" and spec.pruner == "bound"
        assert 1 <= spec.n_trials <= min(30, len(lrs) * len(eps))
        # every cycle keeps at least one epoch
        assert math.floor(spec.finetune.epochs * min(eps)) >= 1


@pytest.mark.parametrize("row", ROWS)
def test_baselines_search_seeds_only(row):
    for prefix in methods(row).keys() & BASELINES.keys():
        spec = load_checked(f"{prefix}-{row}")
        assert set(spec.space) == {"seed"} and spec.space["seed"].choices == (0, 1, 2, 3, 4)
        assert (spec.sampler, spec.pruner, spec.n_trials) == ("grid", "none", 5)


@pytest.mark.parametrize("row", ROWS)
def test_checkpoints(row):
    task = load_checked(f"starsse-{row}").task
    if row == "clip-imagenet":
        assert task.checkpoints == ("{home}/checkpoints/clip-vit-b-32.pt",)
        return
    stem = {"byol": "byol-resnet50", "swint": "swin-tiny"}.get(row.split("-")[0], "resnet50")  # else supervised
    assert task.checkpoints == tuple(f"{{home}}/checkpoints/{stem}-{i}.pth" for i in range(5))


@pytest.mark.parametrize("row", [r for r in ROWS if ROWS[r].model == RESNET])
def test_resnet_recipe(row):
    ft = load_checked(f"starsse-{row}").finetune
    assert (ft.momentum, ft.batch_size, ft.schedule) == (0.9, 256, "cosine")
    assert ft.warmup(100) == 0 and ft.grad_clip == 0 and ft.label_smoothing == 0 and ft.augment == "default"


@pytest.mark.parametrize("row", [r for r in ROWS if ROWS[r].model == SWIN])
def test_swin_recipe(row):
    ft = load_checked(f"starsse-{row}").finetune
    assert ft.batch_size == 256 and not ft.decay_norm_and_bias and ft.grad_clip == 5.0
    assert ft.warmup_epochs == int(0.1 * ft.epochs) and ft.warmup_steps == 0
    assert not ft.cycle_warmup and ft.cycle(4, 0.5).warmup(100) == 0  # warm-up before member 1 only


def test_clip_recipe():
    spec = load_checked("starsse-clip-imagenet")
    ft = spec.finetune
    assert (ft.batch_size, ft.warmup_steps, ft.label_smoothing) == (512, 500, 0.134)
    assert (ft.augment, ft.randaugment_ops, ft.randaugment_magnitude) == ("randaugment", 0, 19)
    assert ft.cycle_warmup and ft.cycle(2, 1).warmup(2000) == 500  # every cycle warms up
    assert len(spec.task.checkpoints) == 1 and spec.task.options == {"head": "zeroshot"}


def test_models_resolve_offline_with_the_papers_preprocessing():
    import open_clip
    from timm.models import get_pretrained_cfg

    from enstune.models._registry import resolve

    for model in (RESNET, SWIN, CLIP):
        resolve(model)  # raises on an unknown name; builds nothing
    resnet, swin = get_pretrained_cfg(RESNET), get_pretrained_cfg(SWIN)
    # torchvision's ResNet-50 evaluation: bilinear Resize(256) + CenterCrop(224)
    assert (resnet.interpolation, resnet.crop_pct, resnet.input_size) == ("bilinear", 0.875, (3, 224, 224))
    assert (resnet.mean, resnet.std) == (swin.mean, swin.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (swin.interpolation, swin.input_size) == ("bicubic", (3, 224, 224))
    assert open_clip.get_model_config(CLIP.partition(":")[2]).get("quick_gelu")  # OpenAI's weights


@pytest.mark.parametrize("row, prefix", PAIRS)
def test_template_says_what_it_is(row, prefix):
    text = importlib.resources.files("enstune.studies").joinpath(f"{prefix}-{row}.toml").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# ") and "StarSSE paper" in first and ("Table" in first or "Appendix" in first)
    description = load_checked(f"{prefix}-{row}").description
    assert description and "\n" not in description
