"""ImageNet's validation layouts (sorted, Kaggle's flat one, torchvision's meta.bin and devkit) and CLIP's names."""

from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from timm.data import ImageNetInfo

from enstune.config import Task
from enstune.data._registry import load_task_data
from enstune.errors import EnstuneError
from enstune.models import from_pretrained
from enstune.models.clip import looks_like_codes
from test_data import _image, _tree
from test_models import TINY_CLIP, tiny_clip, tiny_clip_configs  # noqa: F401 - the fixture registers TINY_CLIP

WNIDS = ImageNetInfo().label_names()[:3]  # n01440764, n01443537, n01484850: open_clip's first three names
NAMES = tuple(open_clip.IMAGENET_CLASSNAMES[:3])  # tench, goldfish, great white shark


def _load(root: Path, home: Path) -> object:
    return load_task_data(Task(dataset="imagenet", data_dir=str(root), val_fraction=0.5, options={"workers": 0}), home)


def _flat_val(val: Path, labels: list[int]) -> list[str]:
    """Validation images as the release names them, in one folder; their ids."""
    ids = [f"ILSVRC2012_val_{n + 1:08d}" for n in range(len(labels))]
    for n, i in enumerate(ids):
        _image(val / f"{i}.JPEG", (20, 16), "RGB", 100 + n)
    return ids


def test_sorted_folders_are_named_as_open_clip_names_imagenet(tmp_path, home):
    _tree(tmp_path / "train", WNIDS, 2)
    _tree(tmp_path / "val", WNIDS, 1, seed=50)
    data = _load(tmp_path, home)
    assert NAMES == ("tench", "goldfish", "great white shark") and data.classes == NAMES
    assert not looks_like_codes(data.classes)


def test_kaggles_flat_validation_with_loc_val_solution(tmp_path, home):
    images = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    _tree(images / "train", WNIDS, 2)
    labels = [2, 0, 1, 2, 0]
    ids = _flat_val(images / "val", labels)
    rows = [f"{i},{WNIDS[y]} 10 20 100 120 {WNIDS[y]} 5 5 50 50" for i, y in zip(ids, labels)]
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    data = _load(tmp_path, home)
    assert data.test.files == [f"{i}.JPEG" for i in ids] and data.test.y.tolist() == labels
    assert data.classes == NAMES and Path(data.test.root) == images / "val"
    x, y = next(data.test.bind(torch.device("cpu"), None, data.test.augmentation).batches(5))
    assert x.shape[0] == 5 and y.tolist() == labels
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[1:]) + "\n")
    with pytest.raises(EnstuneError, match=r"LOC_val_solution.csv has no label for 1 validation images, e.g. "
                                           r"ILSVRC2012_val_00000001.JPEG"):
        _load(tmp_path, home)


def test_torchvisions_meta_bin_labels_a_flat_validation_folder(tmp_path, home):
    _tree(tmp_path / "train", WNIDS, 2)
    labels = [1, 1, 0, 2]
    _flat_val(tmp_path / "val", labels)
    with pytest.raises(EnstuneError, match="no class folders nor labels for them: expected val/<wnid>/ folders, "
                                           "Kaggle's LOC_val_solution.csv, or torchvision's meta.bin"):
        _load(tmp_path, home)
    # what torchvision's parse_devkit_archive writes: (wnid -> names, the wnid of each sorted val image)
    torch.save(({w: (n,) for w, n in zip(WNIDS, NAMES)}, [WNIDS[y] for y in labels]), tmp_path / "meta.bin")
    data = _load(tmp_path, home)
    assert data.test.y.tolist() == labels and data.classes == NAMES
    torch.save(({}, [WNIDS[0]]), tmp_path / "meta.bin")
    with pytest.raises(EnstuneError, match="meta.bin labels 1 validation images, 4 are in val/"):
        _load(tmp_path, home)


def test_a_devkit_archive_that_is_not_the_release_is_one_line(tmp_path, home):
    _tree(tmp_path / "train", WNIDS, 2)
    _flat_val(tmp_path / "val", [0, 1])
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"not the devkit")
    with pytest.raises(EnstuneError) as info:
        _load(tmp_path, home)
    assert str(info.value).startswith("cannot read the devkit") and "\n" not in str(info.value)


def test_zero_shot_head_of_imagenet_is_open_clips_classifier_and_codes_warn(tmp_path, home):
    _tree(tmp_path / "train", WNIDS, 2)
    _tree(tmp_path / "val", WNIDS, 1, seed=50)
    data = _load(tmp_path, home)
    clip = tiny_clip()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # readable names: no warning
        model = from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "clip.pt", 3, head="zeroshot",
                                class_names=data.classes)
    with torch.no_grad():
        expected = open_clip.build_zero_shot_classifier(clip, open_clip.get_tokenizer(TINY_CLIP),
                                                        open_clip.IMAGENET_CLASSNAMES[:3],
                                                        open_clip.OPENAI_IMAGENET_TEMPLATES, device="cpu")
    assert torch.allclose(model.head.weight, clip.logit_scale.exp() * expected.T, atol=1e-4)
    assert torch.allclose(F.normalize(model.head.weight, dim=1), expected.T, atol=1e-5)
    # the same folders read as an image folder of one's own keep their codes: one line says so
    imagefolder = load_task_data(Task(dataset="imagefolder", data_dir=str(tmp_path), options={"workers": 0}), home)
    assert imagefolder.classes == tuple(WNIDS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "clip.pt", 3, head="zeroshot",
                        class_names=imagefolder.classes)
    said = [str(w.message) for w in caught if "look like WordNet IDs or folder codes" in str(w.message)]
    assert len(said) == 1 and "\n" not in said[0] and "3 of 3 class names" in said[0] and "n01440764" in said[0]


def test_what_looks_like_a_code():
    codes = ["n01440764", "001", "class_12", "c0042", "12-3"]
    words = ["tench", "great white shark", "Pneumothorax", "3D printer", "T-shirt", "Boeing 747", "The Eiffel Tower"]
    assert looks_like_codes(codes + words) == codes
