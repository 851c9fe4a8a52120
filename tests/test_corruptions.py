"""Corrupted test sets: every family at every severity, and the CIFAR-100-C loader on arrays made here."""

import numpy as np
import pytest
import torch

from enstune.data._base import TensorSplit
from enstune.data.corruptions import corrupt, list_corruptions, load_cifar_c
from enstune.data.demo import OOD
from enstune.data.images import IMAGENET_MEAN, IMAGENET_STD
from enstune.errors import EnstuneError
from enstune.recipe import Augmentation


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.rand(20, 1, 8, 8, generator=g), torch.arange(20) % 10)


def test_each_family_moves_further_from_the_clean_images_with_severity(images):
    assert sorted(OOD) == list_corruptions()
    out = corrupt(images, OOD)
    for family, splits in out.items():
        assert len(splits) == 5
        change = [(s.x - images.x).abs().mean().item() for s in splits]
        for s in splits:
            assert s.x.shape == images.x.shape and torch.equal(s.y, images.y)
            assert s.x.min() >= 0 and s.x.max() <= 1
        assert change[0] > 0, family
        assert change[-1] > change[0], (family, change)


def test_corruption_is_deterministic(images):
    a, b = corrupt(images, OOD, seed=3), corrupt(images, OOD, seed=3)
    assert all(torch.equal(x.x, y.x) for k in a for x, y in zip(a[k], b[k]))


def test_cifar_c_loader_reads_the_published_layout(tmp_path):
    per = 4
    labels = np.repeat(np.arange(per), 5).reshape(5, per).ravel()  # 5 severities x 4 images
    np.save(tmp_path / "labels.npy", labels)
    imgs = np.zeros((5 * per, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        imgs[s * per:(s + 1) * per] = 50 * s
    np.save(tmp_path / "fog.npy", imgs)
    out = load_cifar_c(tmp_path)
    assert list(out) == ["fog"] and len(out["fog"]) == 5
    assert out["fog"][0].x.shape == (per, 3, 32, 32) and out["fog"][0].x.dtype == torch.uint8
    assert out["fog"][3].x.unique().tolist() == [150]
    assert out["fog"][2].y.tolist() == labels[2 * per:3 * per].tolist()
    bound = out["fog"][3].bind(torch.device("cpu"), None, Augmentation())  # no image config: normalised as is
    x, _ = next(bound.batches(per))
    assert x[0, 0, 0, 0].item() == pytest.approx((150 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-5)
    with pytest.raises(EnstuneError, match="CIFAR-C not found"):
        load_cifar_c(tmp_path / "missing")


def test_colour_images_keep_their_shape_under_every_family():
    rgb = TensorSplit(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(3))
    for family, splits in corrupt(rgb, {k: v[-1:] for k, v in OOD.items()}).items():
        assert splits[0].x.shape == rgb.x.shape, family


def test_uint8_images_stay_uint8_and_keep_their_transforms():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    clean = TensorSplit(x, torch.arange(4), lambda prep, aug: (None, None))
    noisy = corrupt(clean, {"gaussian_noise": [0.2]})["gaussian_noise"][0]
    assert noisy.x.dtype == torch.uint8 and noisy.transforms is clean.transforms
    assert 0 < (noisy.x.float() - x.float()).abs().mean() < 80
