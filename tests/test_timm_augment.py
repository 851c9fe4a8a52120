"""timm's auto-augment on both data paths, drop_path_rate and crop_pct, and member keys that stay put."""

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from enstune import study as st
from enstune.checks import load_checked
from enstune.config import load_template
from enstune.data._base import TensorSplit
from enstune.data.folders import FolderSplit
from enstune.data.images import image_transforms
from enstune.errors import EnstuneError
from enstune.member_keys import member_key
from enstune.methods import get_method
from enstune.models import create_model
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

RAND = "rand-m9-mstd0.5-inc1"

# Keys of member 1 of each template's first point, computed before auto_augment, drop_path_rate and crop_pct
# existed: a job whose augmentation did not change keeps its key. The Swin templates' changed (timm's
# RandAugment after the crop instead of torchvision's RandAugment(2, 27), the reference's crop 0.875).
KEYS = {"starsse-demo": "b198a3a777c0de74c996521cd4be3f84", "starsse-cifar100": "84a9486687a49762696a9a2941f11f75",
        "starsse-clip-imagenet": "60a2e432b67681219628c22e15e10305", "starsse-sun397": "c04a9a48f4b386f5a3729b8cd36f2351",
        "starsse-diverse-cifar100": "fc2a8b95e972ee2e4f27e5f384b25bfa"}
SWIN_BEFORE = "5cfe308c4f92bede419ac258c3c7052d"
# Keys computed while drop_path_rate was a field of the task (task.drop_path_rate), before timm's family declared it
# in task.options: members cached then are found again.
WITH_DROP_PATH = {("starsse-cifar100", "0.1"): "bd4b8513522b487b2dc8eebffde3f333",
                  ("starsse-swint-cifar100", None): "3a64cd18201a2a0d97660d578ce430a3",
                  ("starsse-swint-sun397", None): "9ffbd245af73983a3a6405828c3ef3be",
                  ("starsse-swint-cifar100", "0.2"): "21920fc4af2c0057d067c967ec947ade"}


def _first_key(name: str, overrides: tuple[str, ...] = ()) -> str:
    spec = load_template(name, overrides)
    point = {k: (p.choices[0] if p.choices else p.low) for k, p in spec.space.items()}
    cfg = st.trial_config(optuna.trial.FixedTrial(point), spec)
    job = get_method(cfg.method).plan(cfg)[0]
    return member_key(spec.task, "d" * 64, {"checkpoint": "c" * 64}, job, [])


@pytest.mark.parametrize("name", sorted(KEYS))
def test_keys_of_unchanged_augmentation_stay_as_they_were(name):
    assert _first_key(name) == KEYS[name]
    assert _first_key(name, ("finetune.auto_augment=''",)) == KEYS[name]  # the default, written out


def test_new_settings_enter_the_key_only_when_set():
    base = KEYS["starsse-cifar100"]
    keys = {_first_key("starsse-cifar100", (o,)) for o in
            (f"finetune.auto_augment={RAND}", "task.drop_path_rate=0.1", "task.crop_pct=0.875")}
    assert len(keys) == 3 and base not in keys
    assert _first_key("starsse-swint-cifar100") != SWIN_BEFORE


@pytest.mark.parametrize("name, rate", sorted(WITH_DROP_PATH, key=str))
def test_keys_with_a_stochastic_depth_stay_those_of_the_task_field_it_was(name, rate):
    if rate is None:  # the template's own 0.1
        assert _first_key(name) == WITH_DROP_PATH[name, rate]
        return
    for where in ("task.drop_path_rate", "task.options.drop_path_rate"):  # the old place is read into the new one
        assert _first_key(name, (f"{where}={rate}",)) == WITH_DROP_PATH[name, rate], where


def test_swin_templates_train_as_the_reference_code_does():
    for name in ("starsse-swint-cifar100", "sse-swint-sun397", "localde-swint-cifar100"):
        spec = load_checked(name)
        assert spec.finetune.auto_augment == RAND and spec.finetune.augment == "default"
        assert spec.task.options["drop_path_rate"] == 0.1 and spec.task.crop_pct == 0.875


@pytest.mark.parametrize("overrides, fragment", [
    ([f"finetune.auto_augment=nope"], "no timm auto-augment config"),
    ([f"finetune.auto_augment={RAND}", "finetune.augment=randaugment"], "one RandAugment, not two"),
    ([f"finetune.auto_augment={RAND}", "finetune.augment=none"], "takes augment"),
    (["task.model=test_vit", "task.options.drop_path_rate=1.5"], "task.options.drop_path_rate must be a finite number in 0..0.99, got 1.5"),
    (["task.model=test_vit", "task.drop_path_rate=1"], "task.options.drop_path_rate must be a finite number in 0..0.99, got 1.0"),
    (["task.options.drop_path_rate=0.1"], "task.options.drop_path_rate: the dataset demo and the model demo_mlp read no such option"),
    (["task.crop_pct=1.5"], "task.crop_pct must be in (0, 1]"),
])
def test_bad_augmentation_settings_are_refused_at_create(overrides, fragment):
    with pytest.raises(EnstuneError, match=None) as info:
        load_checked("starsse-demo", overrides)
    assert fragment in str(info.value)


def test_drop_path_rate_reaches_a_timm_network():
    from timm.layers import DropPath

    plain = create_model("test_vit", 3)
    deep = create_model("test_vit", 3, drop_path_rate=0.2)
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    assert any(isinstance(m, DropPath) and m.drop_prob > 0 for m in deep.modules())
    assert plain.state_dict().keys() == deep.state_dict().keys()  # the same weights fit both


def test_timm_auto_augment_on_tensor_resident_images_is_seeded_and_changes_them():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8)
    prep = Preprocess(input_size=(3, 48, 48))
    timm_aug = TensorSplit(x, y, image_transforms).bind(torch.device("cpu"), prep, Augmentation(auto_augment=RAND))
    plain = TensorSplit(x, y, image_transforms).bind(torch.device("cpu"), prep, Augmentation())

    def first(split):
        return next(split.batches(8, torch.Generator().manual_seed(3)))[0]

    state = torch.random.get_rng_state()
    a, b = first(timm_aug), first(timm_aug)
    assert torch.equal(a, b) and a.shape == (8, 3, 48, 48)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator did not move
    assert not torch.equal(a, first(plain))
    native = TensorSplit(x, y, image_transforms).bind(torch.device("cpu"), None, Augmentation(auto_augment=RAND))
    assert next(native.batches(8, torch.Generator().manual_seed(3)))[0].shape == (8, 3, 32, 32)


def test_timm_auto_augment_on_streamed_folders_is_decoded_by_workers_and_seeded(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        name = f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / name)
        files.append(name)
    y = torch.arange(6) % 2
    prep = Preprocess(input_size=(3, 32, 32))
    aug = FolderSplit(tmp_path, files, y, decode="device", preprocess=prep, augmentation=Augmentation(auto_augment=RAND))
    plain = FolderSplit(tmp_path, files, y, decode="workers", preprocess=prep)
    assert not aug.on_device  # timm's operations are PIL's

    def first(split):
        return next(split.batches(6, torch.Generator().manual_seed(5)))[0]

    a = first(aug)
    assert torch.equal(a, first(aug)) and a.shape == (6, 3, 32, 32)
    assert not torch.equal(a, first(plain))
