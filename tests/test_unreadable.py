"""Unreadable image files never reach a trial: found by a scan before it, named, counted, refused when too many."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enstune.config import Task
from enstune.data._registry import load_task_data
from enstune.data.scan import MAX_UNREADABLE, unreadable_reason
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

CPU = torch.device("cpu")
P32 = Preprocess(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=0.875)


def _save(path: Path, mode: str, size: tuple[int, int], fmt: str, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = len(Image.new(mode, (1, 1)).getbands())
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    Image.fromarray(a[..., 0] if bands == 1 else a, mode=mode).save(path, fmt)


def _jpeg_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, "JPEG")
    return buf.getvalue()


BAD = {"truncated.jpg": _jpeg_bytes()[:300], "empty.jpg": b"", "notes.jpg": b"not an image, a text file\n"}
# Modes and sizes that must keep working: grey, CMYK, RGBA, palette, 1x1, and larger than PIL's
# decompression-bomb guard (179M pixels fails by default); a flat colour keeps the file at 2 MB.
ODD = [("grey.jpg", "L", (25, 50), "JPEG"), ("cmyk.jpg", "CMYK", (33, 33), "JPEG"),
       ("rgba.png", "RGBA", (48, 36), "PNG"), ("palette.png", "P", (20, 20), "PNG"),
       ("dot.png", "RGB", (1, 1), "PNG"), ("dot.jpg", "L", (1, 1), "JPEG")]
HUGE = (18000, 10000)


def _dataset(root: Path, good_per_class: int = 150) -> None:
    """train/: two classes of small images and the three bad files; test/: the odd images and a huge one."""
    for label, name in enumerate(["a", "b"]):
        for k in range(good_per_class):
            _save(root / "train" / name / f"{k}.png", "RGB", (6, 5), "PNG", seed=1000 * label + k)
        for j, (file, mode, size, fmt) in enumerate(ODD):
            _save(root / "test" / name / file, mode, size, fmt, seed=label * 10 + j)
    for file, data in BAD.items():
        (root / "train" / "a" / file).write_bytes(data)
    Image.new("RGB", HUGE, (12, 120, 240)).save(root / "test" / "b" / "huge.jpg", "JPEG", quality=50)


def _load(root: Path, home: Path, workers: int, **task) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_task_data(Task(dataset="imagefolder", data_dir=str(root), options={"workers": workers}, **task),
                              home)
    return data, [str(w.message) for w in caught]


def _epoch(split, generator=None, batch_size=8):
    xs, ys = zip(*split.batches(batch_size, generator))
    return torch.cat(xs), torch.cat(ys)


def test_the_reason_a_file_cannot_be_read(tmp_path):
    for file, data in BAD.items():
        (tmp_path / file).write_bytes(data)
        assert unreadable_reason(str(tmp_path / file)), file
    for file, mode, size, fmt in ODD:
        _save(tmp_path / file, mode, size, fmt)
        assert unreadable_reason(str(tmp_path / file)) == "", file
    assert "truncated" in unreadable_reason(str(tmp_path / "truncated.jpg")).lower()
    assert "UnidentifiedImageError" in unreadable_reason(str(tmp_path / "notes.jpg"))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_are_named_counted_and_left_out_and_odd_images_stream(tmp_path, home, workers):
    _dataset(tmp_path)
    data, said = _load(tmp_path, home, workers=workers, val_fraction=0.1)
    named = [line for line in said if "cannot be read" in line]
    assert len(named) == 3 and all("\n" not in line for line in named)
    for file in BAD:
        assert sum(file in line for line in named) == 1, file
    assert data.attrs == {"unreadable_images": 3}
    kept = data.train.files + data.val.files
    assert len(kept) == 300 and not set(BAD) & {Path(f).name for f in kept}
    assert len(data.test) == 2 * len(ODD) + 1
    # Both decoding paths read every odd image: evaluation in order, training seeded.
    for decode in ("workers", "device"):
        test = type(data.test)(data.test.root, data.test.files, data.test.y, workers, decode=decode)
        x, y = _epoch(test.bind(CPU, P32, Augmentation()))
        assert x.shape == (len(data.test), 3, 32, 32) and torch.isfinite(x).all()
        assert torch.equal(y, data.test.y)
        x, _ = _epoch(test.bind(CPU, P32, Augmentation()), torch.Generator().manual_seed(0))
        assert x.shape == (len(data.test), 3, 32, 32)
    # A second load reads the record: no file decoded again, one line for all of them.
    records = list((home / "scans").glob("imagefolder-train-*.json"))
    assert len(records) == 1 and set(json.loads(records[0].read_text())["unreadable"]) == {f"a/{f}" for f in BAD}
    again, said = _load(tmp_path, home, workers=workers, val_fraction=0.1)
    assert said == [f"imagefolder train: 3 unreadable images left out, listed in {records[0]}"]
    assert again.train.files == data.train.files and again.attrs == {"unreadable_images": 3}


def test_a_dataset_with_too_many_unreadable_files_is_refused_in_one_line(tmp_path, home):
    _dataset(tmp_path, good_per_class=4)
    assert 3 > MAX_UNREADABLE * 11
    with pytest.raises(EnstuneError) as info:
        _load(tmp_path, home, workers=0)
    line = str(info.value)
    assert "\n" not in line and "imagefolder train: 3 of 11 images" in line and "more than the 1%" in line


def test_a_file_spoilt_after_the_scan_is_left_out_of_training_and_named_in_evaluation(tmp_path, home):
    _dataset(tmp_path, good_per_class=3)
    for file in BAD:
        (tmp_path / "train" / "a" / file).unlink()
    data, _ = _load(tmp_path, home, workers=0, val_fraction=0.5)
    assert data.attrs == {"unreadable_images": 0}
    spoilt = data.train.files[0]
    (tmp_path / "train" / spoilt).write_bytes(b"")
    for decode in ("workers", "device"):
        train = type(data.train)(data.train.root, data.train.files, data.train.y, 0, decode=decode)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x, y = _epoch(train.bind(CPU, P32, Augmentation()), torch.Generator().manual_seed(1), batch_size=2)
        assert len(y) == len(train) - 1 and x.shape[1:] == (3, 32, 32)
        assert [spoilt in str(w.message) for w in caught] == [True]
        with pytest.raises(EnstuneError, match=f"cannot read .*{spoilt}"):
            _epoch(train.bind(CPU, P32, Augmentation()))
