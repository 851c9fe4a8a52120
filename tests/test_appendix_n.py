"""Appendix N's datasets in their released layouts: ChestX-ray14 (NIH) and DomainNet Clipart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enstune.config import Task
from enstune.data._registry import list_datasets, load_task_data
from enstune.data.chestx import FINDINGS
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

CPU = torch.device("cpu")
P32 = Preprocess(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=0.875)
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def _png(path: Path, mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = len(Image.new(mode, (1, 1)).getbands())
    a = np.random.default_rng(seed).integers(0, 256, (24, 24, bands), dtype=np.uint8)
    Image.fromarray(a[..., 0] if bands == 1 else a, mode=mode).save(path)


# (name, findings, listed in) as the release writes them
ENTRIES = [
    ("00000001_000.png", "Cardiomegaly", "train"), ("00000001_001.png", "Cardiomegaly|Emphysema", "train"),
    ("00000002_000.png", "No Finding", "train"), ("00000003_000.png", "Hernia", "train"),
    ("00000004_000.png", "Mass", "train"), ("00000005_000.png", "Effusion", "train"),
    ("00000006_000.png", "Pneumonia", "train"), ("00000007_000.png", "Atelectasis", "train"),
    ("00000008_000.png", "Pneumothorax", "train"), ("00000009_000.png", "Nodule", "train"),
    ("00000010_000.png", "Infiltration", "train"), ("00000011_000.png", "Effusion", "train"),
    ("00030801_001.png", "Atelectasis", "test"), ("00030802_000.png", "Effusion|Infiltration", "test"),
    ("00030803_000.png", "Nodule", "test"), ("00030804_000.png", "No Finding", "test"),
]


def _write_chestx(root: Path) -> None:
    """The NIH release: Data_Entry_2017.csv, the two lists, PNGs spread over images_001/images … images_002/images."""
    root.mkdir(parents=True)
    rows = [f"{name},{labels},0,{name[:8]},58,M,PA,2682,2749,0.143,0.143," for name, labels, _ in ENTRIES]
    (root / "Data_Entry_2017.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n, _, s in ENTRIES if s == "train"))
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n, _, s in ENTRIES if s == "test"))
    for i, (name, _, _) in enumerate(ENTRIES):
        # Most of the release is 8-bit grey; a few of its PNGs are RGBA.
        _png(root / f"images_{1 + i % 2:03d}" / "images" / name, "RGBA" if i == 4 else "L", i)


def test_both_are_registered():
    assert {"chestx", "clipart"} <= set(list_datasets())


def test_chestx_keeps_single_findings_of_the_seven_classes_and_carves_a_fifth(tmp_path, home):
    _write_chestx(tmp_path / "chestx")
    data = load_task_data(Task(dataset="chestx", data_dir=str(tmp_path), val_fraction=0.2, options={"workers": 0}), home)
    assert data.classes == FINDINGS and data.num_classes == 7
    # multi-label, "No Finding", Pneumonia and Hernia are dropped: 8 training and 2 test images left
    assert (len(data.train) + len(data.val), len(data.val), len(data.test)) == (8, 2, 2)
    train = {Path(f).name: label for f, label in zip(data.train.files + data.val.files,
                                                     data.train.y.tolist() + data.val.y.tolist())}
    assert train["00000001_000.png"] == FINDINGS.index("Cardiomegaly") and "00000001_001.png" not in train
    assert {Path(f).name for f in data.test.files} == {"00030801_001.png", "00030803_000.png"}
    assert data.test.files[0].startswith("images_001/images/") and data.attrs == {"unreadable_images": 0}
    x, y = next(data.train.bind(CPU, P32, Augmentation()).batches(8, torch.Generator().manual_seed(0)))
    assert x.shape == (6, 3, 32, 32) and torch.isfinite(x).all()
    # the release unpacked at data_dir itself reads the same
    same = load_task_data(Task(dataset="chestx", data_dir=str(tmp_path / "chestx"), val_fraction=0.2,
                               options={"workers": 0}), home)
    assert same.train.files == data.train.files


def test_chestx_errors_are_one_line_naming_the_file(tmp_path, home):
    with pytest.raises(EnstuneError, match="ChestX-ray14 not found: expected Data_Entry_2017.csv"):
        load_task_data(Task(dataset="chestx", data_dir=str(tmp_path), options={"workers": 0}), home)
    _write_chestx(tmp_path / "chestx")
    (tmp_path / "chestx" / "images_001" / "images" / "00000004_000.png").unlink()
    with pytest.raises(EnstuneError, match=r"train_val_list.txt lists 1 single-finding images missing .* 00000004_000"):
        load_task_data(Task(dataset="chestx", data_dir=str(tmp_path), options={"workers": 0}), home)
    _png(tmp_path / "chestx" / "images_001" / "images" / "00000004_000.png", "L", 0)
    (tmp_path / "chestx" / "test_list.txt").unlink()
    with pytest.raises(EnstuneError, match="split list not found: expected .*test_list.txt"):
        load_task_data(Task(dataset="chestx", data_dir=str(tmp_path), options={"workers": 0}), home)


CLIPART = ["aircraft_carrier", "The_Eiffel_Tower", "zigzag"]


def _write_clipart(root: Path, per_class: int = 4) -> dict[str, list[str]]:
    """clipart/<class>/<file>.jpg with clipart_train.txt / clipart_test.txt beside clipart/, as released."""
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for label, name in enumerate(CLIPART):
        for k in range(per_class):
            file = f"clipart/{name}/{name.lower()}_{k:03d}.jpg"
            _png(root / file, "RGB", 10 * label + k)  # JPEG bytes under .jpg: PIL picks the format by the suffix
            lists["test" if k == 0 else "train"].append(f"{file} {label}")
    for split, lines in lists.items():
        (root / f"clipart_{split}.txt").write_text("\n".join(lines) + "\n")
    return lists


def test_clipart_reads_the_released_lists_and_names_classes_by_folder(tmp_path, home):
    lists = _write_clipart(tmp_path)
    assert Image.open(tmp_path / lists["train"][0].split()[0]).format == "JPEG"
    data = load_task_data(Task(dataset="clipart", data_dir=str(tmp_path), val_fraction=0.2, split_seed=3,
                               options={"workers": 0}), home)
    assert data.classes == ("aircraft carrier", "The Eiffel Tower", "zigzag") and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (7, 2, 3)
    assert data.test.files == [line.split()[0] for line in lists["test"]] and data.test.y.tolist() == [0, 1, 2]
    x, y = next(data.test.bind(CPU, P32, Augmentation()).batches(3))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]


def test_clipart_errors_are_one_line(tmp_path, home):
    with pytest.raises(EnstuneError, match="DomainNet clipart not found: expected .*clipart_train.txt"):
        load_task_data(Task(dataset="clipart", data_dir=str(tmp_path), options={"workers": 0}), home)
    _write_clipart(tmp_path)
    listing = tmp_path / "clipart_test.txt"
    listing.write_text(listing.read_text() + "clipart/zigzag/zigzag_000.jpg 1\n")
    with pytest.raises(EnstuneError, match=r"clipart_test.txt:4: label 1 is class 'The_Eiffel_Tower' elsewhere"):
        load_task_data(Task(dataset="clipart", data_dir=str(tmp_path), options={"workers": 0}), home)
    listing.write_text("clipart/zigzag/zigzag_000.jpg\n")
    with pytest.raises(EnstuneError, match=r"clipart_test.txt:1: expected '<domain>/<class>/<file>.jpg <label>'"):
        load_task_data(Task(dataset="clipart", data_dir=str(tmp_path), options={"workers": 0}), home)
