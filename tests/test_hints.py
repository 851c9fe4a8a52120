"""Hints in the errors and warnings of loading a checkpoint: a key prefix to strip, a timm name to pick."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

from enstune.errors import EnstuneError
from enstune.models import from_pretrained


def test_a_file_whose_weights_sit_under_a_prefix_names_checkpoint_prefix(tmp_path):
    state = timm.create_model("test_resnet", num_classes=5).state_dict()
    # solo-learn's layout: the network under backbone., its projector and momentum copy beside it
    file = {f"backbone.{k}": v for k, v in state.items()} | {"projector.0.weight": torch.zeros(4, 4),
                                                              "momentum_backbone.conv1.weight": torch.zeros(1)}
    torch.save({"state_dict": file}, tmp_path / "solo.ckpt")
    with pytest.raises(EnstuneError) as info:
        from_pretrained("test_resnet", tmp_path / "solo.ckpt", 3)
    line = str(info.value)
    assert "\n" not in line and "set task.checkpoint_prefix = 'backbone'" in line
    from_pretrained("test_resnet", tmp_path / "solo.ckpt", 3, prefix="backbone")  # as the hint says
    torch.save({"state_dict": {"other.conv1.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(EnstuneError) as info:
        from_pretrained("test_resnet", tmp_path / "other.ckpt", 3)
    assert "checkpoint_prefix" not in str(info.value)


def test_a_bare_resnet50_warns_that_timms_default_config_is_not_torchvisions(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "tv.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_pretrained("resnet50", tmp_path / "tv.pth", 3)
    said = [str(w.message) for w in caught if "pretrained config" in str(w.message)]
    assert len(said) == 1 and "\n" not in said[0]
    assert "resnet50.a1_in1k (bicubic, crop 0.95)" in said[0] and "'resnet50.tv_in1k' (bilinear, crop 0.875)" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_pretrained("resnet50.tv_in1k", tmp_path / "tv.pth", 3)
