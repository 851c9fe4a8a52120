"""Datasets read from files the tests write in their real on-disk layouts, and the image transforms."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import pil_loader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from enstune.config import Task
from enstune.data._base import TensorSplit, carve_validation, steps_per_epoch
from enstune.data._registry import load_task_data
from enstune.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from enstune.data.folders import FolderSplit
from enstune.data.images import crop_boxes, image_transforms, resized_crops
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

CPU = torch.device("cpu")
P224 = Preprocess(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875)
P32 = Preprocess(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=0.875)


def _pixels(n: int, seed: int) -> np.ndarray:
    """``n`` random images in the pickles' row layout: 1024 red, 1024 green, 1024 blue values."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict:
    names = [f"class{i}" for i in range(10)]
    folder = root / "cifar-10-batches-py"
    x, y = _pixels(5 * per_batch, 1), np.arange(5 * per_batch) % 10
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _dump({"batch_label": f"training batch {b + 1} of 5", "labels": y[part].tolist(), "data": x[part],
               "filenames": [f"{i}.png" for i in range(per_batch)]}, folder / f"data_batch_{b + 1}")
    tx, ty = _pixels(n_test, 2), (np.arange(n_test) * 3) % 10
    _dump({"batch_label": "testing batch 1 of 1", "labels": ty.tolist(), "data": tx}, folder / "test_batch")
    _dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, folder / "batches.meta")
    return {"x": x.reshape(-1, 3, 32, 32), "y": y, "test_x": tx.reshape(-1, 3, 32, 32), "test_y": ty, "names": names}


def _write_cifar100(root: Path, n_train: int = 6, n_test: int = 5) -> dict:
    names = [f"fine{i:02d}" for i in range(100)]
    folder = root / "cifar-100-python"
    x, y = _pixels(n_train, 3), (np.arange(n_train) * 17) % 100
    _dump({"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x}, folder / "train")
    tx, ty = _pixels(n_test, 4), (np.arange(n_test) * 31) % 100
    _dump({"fine_labels": ty.tolist(), "coarse_labels": (ty // 5).tolist(), "data": tx}, folder / "test")
    _dump({"fine_label_names": names, "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")
    return {"x": x.reshape(-1, 3, 32, 32), "y": y, "test_x": tx.reshape(-1, 3, 32, 32), "test_y": ty, "names": names}


def _load(home: Path, **task) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tests' pickles are not the official files
        return load_task_data(Task(**task), home)


def _epoch(split, generator=None, batch_size=4):
    xs, ys = zip(*split.batches(batch_size, generator))
    return torch.cat(xs), torch.cat(ys)


# --- CIFAR --------------------------------------------------------------------------------------

def test_cifar10_round_trips_pixels_labels_and_names_and_warns_of_checksums(tmp_path, home):
    ref = _write_cifar10(tmp_path)
    with pytest.warns(UserWarning,
                      match="checksum differs from the official CIFAR-10 file's; reading it anyway") as rec:
        data = load_task_data(Task(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2, split_seed=3), home)
    warned = {Path(str(w.message).split(":")[0]).name for w in rec if "checksum" in str(w.message)}
    assert warned == {*(f"data_batch_{b}" for b in range(1, 6)), "test_batch", "batches.meta"}
    assert data.num_classes == 10 and data.classes == tuple(ref["names"])
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 4)
    # the carve is carve_validation's: the same seeded permutation of the training images
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    for split, index in ((data.val, perm[:3]), (data.train, perm[3:])):
        assert split.x.dtype == torch.uint8 and split.x.shape == (len(index), 3, 32, 32)
        assert torch.equal(split.x, torch.from_numpy(ref["x"])[index])
        assert split.y.dtype == torch.long and split.y.tolist() == ref["y"][index.numpy()].tolist()
    assert torch.equal(data.test.x, torch.from_numpy(ref["test_x"])) and data.test.y.tolist() == ref["test_y"].tolist()
    assert data.ood is None  # no CIFAR-10-C beside it


def test_cifar100_reads_fine_labels_and_the_published_corruptions(tmp_path, home):
    ref = _write_cifar100(tmp_path / "data")
    per = 2
    c_labels = np.arange(5 * per) % 100
    c_images = np.stack([np.full((32, 32, 3), 40 * s + i, np.uint8) for s in range(5) for i in range(per)])
    (tmp_path / "data" / "CIFAR-100-C").mkdir()
    np.save(tmp_path / "data" / "CIFAR-100-C" / "labels.npy", c_labels)
    np.save(tmp_path / "data" / "CIFAR-100-C" / "fog.npy", c_images)
    data = _load(home.parent, dataset="cifar100", val_fraction=0.5)  # data_dir "{home}/data"
    assert data.num_classes == 100 and data.classes == tuple(ref["names"])
    got = torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y])
    want = {bytes(img.tobytes()): int(label) for img, label in zip(ref["x"], ref["y"])}
    assert len(data.val) == 3 and {bytes(i.numpy().tobytes()): int(c) for i, c in zip(*got)} == want
    assert data.test.y.tolist() == ref["test_y"].tolist()  # fine labels, in file order
    ood = data.ood()
    assert list(ood) == ["fog"] and len(ood["fog"]) == 5
    severity3 = ood["fog"][2]
    assert severity3.x.dtype == torch.uint8 and severity3.x.shape == (per, 3, 32, 32)
    assert severity3.x[1].unique().tolist() == [81] and severity3.y.tolist() == c_labels[2 * per:3 * per].tolist()
    bound = severity3.bind(CPU, P224, Augmentation())
    assert bound.x.dtype == torch.uint8  # the corrupted images too are transformed batch by batch
    x, _ = next(bound.batches(2))
    expected = (81 / 255 - torch.tensor(P224.mean)) / torch.tensor(P224.std)
    assert x.shape == (2, 3, 224, 224) and torch.allclose(x[1], expected[:, None, None].expand(3, 224, 224), atol=1e-5)


def test_missing_cifar_files_are_one_line_errors_naming_the_path(tmp_path, home):
    with pytest.raises(EnstuneError) as err:
        load_task_data(Task(dataset="cifar100", data_dir=str(tmp_path)), home)
    assert str(tmp_path / "cifar-100-python" / "train") in str(err.value) and "\n" not in str(err.value)
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(EnstuneError, match="expected .*data_batch_3") as err:
        _load(home, dataset="cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(err.value)
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(EnstuneError, match="cannot read CIFAR-10 from"):
        _load(home, dataset="cifar10", data_dir=str(tmp_path))


def test_cifar_bound_at_224_keeps_uint8_storage_and_small_nets_see_native_normalised_images(tmp_path, home):
    ref = _write_cifar100(tmp_path)
    data = _load(home, dataset="cifar100", data_dir=str(tmp_path))
    bound = data.test.bind(CPU, P224, Augmentation())
    assert bound.x.dtype == torch.uint8 and bound.x.shape == (5, 3, 32, 32)
    x, y = next(bound.batches(4, torch.Generator().manual_seed(0)))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 224, 224)
    # no backbone image config: the images at 32x32, normalised with CIFAR-100's statistics
    native = data.test.bind(CPU, None, Augmentation())
    x, y = _epoch(native)
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    assert torch.allclose(x, (torch.from_numpy(ref["test_x"]).float() / 255 - mean) / std, atol=1e-6)
    # training: each image shifted by up to 4 pixels (black fill) and maybe mirrored, nothing else
    xt, yt = next(native.batches(5, torch.Generator().manual_seed(1)))
    padded = torch.nn.functional.pad(torch.from_numpy(ref["test_x"]).float() / 255, (4, 4, 4, 4))
    for img, label in zip(xt * std + mean, yt.tolist()):
        source = padded[ref["test_y"].tolist().index(label)]
        shifts = [source[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        assert any(torch.allclose(img, s, atol=1e-5) or torch.allclose(img, s.flip(-1), atol=1e-5) for s in shifts)


# --- the device transforms ----------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_device_evaluation_matches_torchvision_resize_centre_crop_normalize(interpolation):
    # Tolerance 1e-5: on the CPU the batch goes through the very v2 kernels (uint8 resize, rounding
    # included) that the per-image reference uses, so only float rounding of Normalize can differ.
    # On CUDA, bilinear uint8 takes the float path: up to one uint8 level (1/255/std) apart.
    prep = Preprocess(input_size=(3, 24, 24), interpolation=interpolation, crop_pct=0.9)
    reference = v2.Compose([v2.Resize(26, interpolation=v2.InterpolationMode(interpolation)), v2.CenterCrop(24),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)])
    _, evaluate = image_transforms(prep, Augmentation())
    for h, w in ((32, 32), (40, 30), (90, 130)):  # upscaled, non-square, downscaled (antialiased)
        x = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
        out = evaluate(x)
        assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
        assert torch.allclose(out, torch.stack([reference(img) for img in x]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_batched_crops_are_torchvision_resized_crops_of_their_boxes(interpolation):
    x = torch.randint(0, 256, (6, 3, 30, 40), generator=torch.Generator().manual_seed(0)).float()
    boxes = crop_boxes(6, 30, 40, torch.Generator().manual_seed(1))
    flip = torch.tensor([False, True] * 3)
    out = resized_crops(x, boxes, flip, (20, 20), interpolation)
    for img, (top, left, h, w), f, got in zip(x, boxes.tolist(), flip, out):
        want = TF.resized_crop(img, top, left, h, w, [20, 20], interpolation=v2.InterpolationMode(interpolation),
                               antialias=False)
        want = want.flip(-1) if f else want
        # The batch samples the whole image: at the box's edge its taps reach the pixels just
        # outside, where crop-then-resize repeats the edge; inside, the same interpolation.
        assert torch.allclose(got[:, 3:-3, 3:-3], want[:, 3:-3, 3:-3], atol=2e-3), (top, left, h, w)


def test_crop_boxes_follow_randomresizedcrop():
    boxes = crop_boxes(2000, 30, 40, torch.Generator().manual_seed(0)).float()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 40).all()
    area = h * w / 1200
    assert area.min() > 0.07 and area.max() == 1  # scale (0.08, 1), after rounding
    crop = v2.RandomResizedCrop(20)
    torch.manual_seed(0)
    reference = torch.tensor([list(crop.make_params([torch.zeros(3, 30, 40)]).values()) for _ in range(2000)]).float()
    assert abs(area.mean() - (reference[:, 2] * reference[:, 3] / 1200).mean()) < 0.02  # its rejections too
    assert abs((w / h).log().std() - (reference[:, 3] / reference[:, 2]).log().std()) < 0.02
    assert ((w / h) > 0.6).all() and ((w / h) < 1.6).all()  # ratio (3/4, 4/3), after rounding
    assert len({tuple(b) for b in boxes.tolist()}) > 500  # every image its own box
    # no box fits a 4x100 strip: torchvision's fallback, the centre crop at ratio 4/3
    assert crop_boxes(5, 4, 100, torch.Generator().manual_seed(0)).tolist() == [[0, 47, 4, 5]] * 5


def _ramp_split(n: int = 16) -> TensorSplit:
    # every image a left-to-right ramp with its own offset, so crops and flips show
    ramp = torch.arange(32).mul(6).add(20).to(torch.uint8).expand(3, 32, 32)
    return TensorSplit(torch.stack([ramp] * n), torch.arange(n), image_transforms)


def test_training_batches_are_seeded_per_image_crops_and_flips_at_the_input_size():
    split = _ramp_split().bind(CPU, P224, Augmentation())
    assert split.x.dtype == torch.uint8
    state = torch.get_rng_state()
    x1, y1 = _epoch(split, torch.Generator().manual_seed(5))
    x2, y2 = _epoch(split, torch.Generator().manual_seed(5))
    x3, _ = _epoch(split, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    assert x1.shape == (16, 3, 224, 224) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.allclose(x1, x3)
    assert y1.tolist() == torch.randperm(16, generator=torch.Generator().manual_seed(5)).tolist()
    pixels = x1 * torch.tensor(P224.std)[:, None, None] + torch.tensor(P224.mean)[:, None, None]
    # the ramp's pixels, 20..206, normalised (bicubic overshoots a little where the ramp meets the border)
    assert 15 / 255 < pixels.min() < 25 / 255 and 200 / 255 < pixels.max() < 211 / 255
    rows = pixels[:, 0, 112]
    left_to_right = (rows[:, -1] > rows[:, 0]).sum().item()
    assert 0 < left_to_right < 16  # some mirrored, some not
    assert len({round(r.std().item(), 4) for r in rows}) > 8  # the same image, cropped differently


def test_evaluation_batches_come_in_order_through_the_evaluation_transform():
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = TensorSplit(x, torch.arange(7) * 2, image_transforms).bind(CPU, P224, Augmentation())
    out, y = _epoch(split, batch_size=3)
    _, evaluate = image_transforms(P224, Augmentation())
    assert y.tolist() == list(range(0, 14, 2)) and torch.equal(out, evaluate(x))
    assert out.shape == (7, 3, 224, 224)


def test_randaugment_and_none_policies():
    split = TensorSplit(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(0)), torch.arange(6), image_transforms)
    default, _ = _epoch(split.bind(CPU, P32, Augmentation()), torch.Generator().manual_seed(1))
    zero, _ = _epoch(split.bind(CPU, P32, Augmentation("randaugment", 0, 9)), torch.Generator().manual_seed(1))
    assert torch.equal(zero, default)  # no ops: the default augmentation, draw for draw
    ra = split.bind(CPU, P32, Augmentation("randaugment", 2, 9))
    state = torch.get_rng_state()
    a, _ = _epoch(ra, torch.Generator().manual_seed(1))
    b, _ = _epoch(ra, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, default) and torch.equal(torch.get_rng_state(), state)
    none = split.bind(CPU, P32, Augmentation("none"))
    trained, y = _epoch(none, torch.Generator().manual_seed(1))
    assert torch.equal(trained, none._eval(split.x[y]))  # shuffled, not augmented
    with pytest.raises(EnstuneError, match="augmentation policy must be one of"):
        split.bind(CPU, P32, Augmentation("autoaugment"))


# --- image folders ------------------------------------------------------------------------------

SIZES_MODES = [((40, 30), "RGB", "jpg"), ((25, 50), "L", "jpg"), ((33, 33), "CMYK", "jpg"), ((48, 36), "RGBA", "png")]


def _image(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(a[..., 0] if channels == 1 else a, mode=mode).save(path)


def _tree(root: Path, classes: list[str], per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """class folders of images of varied sizes and modes; (relative path, label) in ImageFolder's order."""
    out = []
    for label, name in enumerate(classes):
        for k in range(per_class):
            size, mode, ext = SIZES_MODES[(k + label) % len(SIZES_MODES)]
            _image(root / name / f"img{k}.{ext}", size, mode, seed + 10 * label + k)
            out.append((f"{name}/img{k}.{ext}", label))
    return out


def _eval_reference(path: Path, prep: Preprocess) -> torch.Tensor:
    mode = v2.InterpolationMode(prep.interpolation)
    t = v2.Compose([v2.Resize(int(prep.size[0] / prep.crop_pct), interpolation=mode),
                    v2.CenterCrop(prep.size), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(prep.mean, prep.std)])
    return t(pil_loader(path))


def test_imagefolder_carves_validation_and_streams_batches_at_the_input_size(tmp_path, home):
    classes = ["cat", "dog", "eel"]
    train_files = _tree(tmp_path / "train", classes, 4)
    test_files = _tree(tmp_path / "test", classes, 2, seed=100)
    data = load_task_data(Task(dataset="imagefolder", data_dir=str(tmp_path), val_fraction=0.25, split_seed=1,
                               options={"workers": 0}), home)
    assert data.classes == tuple(classes) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert data.val.files == [train_files[i][0] for i in perm[:3]]
    assert data.train.y.tolist() == [train_files[i][1] for i in perm[3:]]
    test = data.test.bind(CPU, P32, Augmentation())
    x, y = _epoch(test, batch_size=4)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert [(f, label) for f, label in zip(test.files, y.tolist())] == test_files  # in order
    for img, (name, _) in zip(x, test_files):
        assert torch.allclose(img, _eval_reference(tmp_path / "test" / name, P32), atol=1e-5)
    grey = x[[n for n, (f, _) in enumerate(test_files) if f == "cat/img1.jpg"][0]]
    pixels = grey * torch.tensor(P32.std)[:, None, None] + torch.tensor(P32.mean)[:, None, None]
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)


def test_folder_training_batches_are_seeded_whatever_the_workers(tmp_path, home):
    _tree(tmp_path / "train", ["a", "b"], 3)
    _tree(tmp_path / "val", ["a", "b"], 1)
    data = load_task_data(Task(dataset="imagefolder", data_dir=str(tmp_path), val_fraction=0.2, options={"workers": 0}), home)
    assert len(data.test) == 2  # val/ is the test split when there is no test/
    aug = Augmentation("randaugment", 2, 9)
    train = data.train.bind(CPU, P32, aug)
    state = torch.get_rng_state()
    x1, y1 = _epoch(train, torch.Generator().manual_seed(7), batch_size=2)
    x2, y2 = _epoch(train, torch.Generator().manual_seed(7), batch_size=2)
    x3, _ = _epoch(train, torch.Generator().manual_seed(8), batch_size=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert x1.shape == (5, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    two = FolderSplit(train.root, train.files, train.y, workers=2).bind(CPU, P32, aug)
    x4, y4 = _epoch(two, torch.Generator().manual_seed(7), batch_size=2)
    assert torch.equal(x4, x1) and torch.equal(y4, y1)
    # each batch's labels are those of its files, in the generator's order
    g = torch.Generator().manual_seed(7)
    torch.randint(0, 2**62, (), generator=g)  # the augmentation seed is drawn first
    order = torch.randperm(5, generator=g)
    assert y1.tolist() == train.y[order].tolist()


def test_imagenet_takes_val_as_test_and_names_from_meta_bin(tmp_path, home):
    wnids = ["n01440764", "n01443537"]
    _tree(tmp_path / "train", wnids, 3)
    _tree(tmp_path / "val", wnids, 2, seed=50)
    data = load_task_data(Task(dataset="imagenet", data_dir=str(tmp_path), val_fraction=0.5, options={"workers": 0}), home)
    # named as open_clip names the 1,000 classes, meta.bin or not
    assert data.classes == ("tench", "goldfish") and (len(data.train), len(data.val), len(data.test)) == (3, 3, 4)
    assert data.test.y.tolist() == [0, 0, 1, 1]
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish",)}, []), tmp_path / "meta.bin")
    data = load_task_data(Task(dataset="imagenet", data_dir=str(tmp_path), options={"workers": 0}), home)
    assert data.classes == ("tench", "goldfish")
    _tree(tmp_path / "val", ["n09999999"], 1)
    with pytest.raises(EnstuneError, match="class folders that the training set lacks: n09999999"):
        load_task_data(Task(dataset="imagenet", data_dir=str(tmp_path)), home)


def _write_sun(root: Path) -> dict:
    keys = ["/a/abbey", "/a/airplane_cabin", "/b/bakery/shop"]
    sun = root / "SUN397"
    sun.mkdir(parents=True)
    (sun / "ClassName.txt").write_text("".join(k + "\n" for k in keys))
    files = {k: [f"{k}/sun_{k[3:].replace('/', '')}{i}.jpg" for i in range(4)] for k in keys}
    for n, k in enumerate(keys):
        for i, f in enumerate(files[k]):
            _image(sun / f.lstrip("/"), (30 + 5 * i, 28), ("RGB", "L", "CMYK", "RGB")[i], 7 * n + i)
    parts = root / "Partitions"
    parts.mkdir()
    for p, (tr, te) in {1: ((0, 1), (2, 3)), 2: ((2, 3, 1), (0,))}.items():
        (parts / f"Training_{p:02d}.txt").write_text("".join(files[k][i] + "\n" for k in keys for i in tr))
        (parts / f"Testing_{p:02d}.txt").write_text("".join(files[k][i] + "\n" for k in keys for i in te))
    return files


def test_sun397_reads_the_official_partition_and_readable_names(tmp_path, home):
    files = _write_sun(tmp_path)
    data = load_task_data(Task(dataset="sun397", data_dir=str(tmp_path), options={"partition": 2, "workers": 0}, val_fraction=0.2),
                          home)
    assert data.classes == ("abbey", "airplane cabin", "bakery shop") and data.num_classes == 3
    train = sorted(zip(data.train.files + data.val.files, (data.train.y.tolist() + data.val.y.tolist())))
    keys = list(files)
    assert train == sorted((files[k][i].lstrip("/"), n) for n, k in enumerate(keys) for i in (2, 3, 1))
    assert (len(data.train), len(data.val)) == (7, 2)
    assert data.test.files == [files[k][0].lstrip("/") for k in keys] and data.test.y.tolist() == [0, 1, 2]
    x, y = _epoch(data.test.bind(CPU, P32, Augmentation()))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]
    first = load_task_data(Task(dataset="sun397", data_dir=str(tmp_path), options={"partition": 1, "workers": 0}), home)
    assert sorted(first.test.files) == sorted(files[k][i].lstrip("/") for k in keys for i in (2, 3))
    with pytest.raises(EnstuneError, match="Training_03.txt and Testing_03.txt not found") as err:
        load_task_data(Task(dataset="sun397", data_dir=str(tmp_path), options={"partition": 3}), home)
    assert str(tmp_path / "Partitions") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EnstuneError, match="partition must be 1..10, got 11"):
        load_task_data(Task(dataset="sun397", data_dir=str(tmp_path), options={"partition": 11}), home)
    (tmp_path / "SUN397" / files["/a/abbey"][0].lstrip("/")).unlink()
    with pytest.raises(EnstuneError, match="lists 1 images missing under"):
        load_task_data(Task(dataset="sun397", data_dir=str(tmp_path), options={"partition": 2}), home)


def test_folder_digest_follows_paths_sizes_and_labels_and_subsets_select_files(tmp_path, home):
    _tree(tmp_path / "train", ["a", "b"], 4)
    _tree(tmp_path / "val", ["a", "b"], 1)
    task = Task(dataset="imagenet", data_dir=str(tmp_path), options={"workers": 0})
    data = load_task_data(task, home)
    first = data.train.digest()
    assert load_task_data(task, home).train.digest() == first
    assert data.train.bind(CPU, P32, Augmentation()).digest() == first
    sample = data.train.sample(3, seed=0)
    assert len(sample) == 3 and set(sample.files) <= set(data.train.files)
    by_file = dict(zip(data.train.files, data.train.y.tolist()))
    assert [by_file[f] for f in sample.files] == sample.y.tolist()
    relabelled = FolderSplit(data.train.root, data.train.files, 1 - data.train.y)
    assert relabelled.digest() != first
    with open(tmp_path / "train" / data.train.files[0], "ab") as f:
        f.write(b"\0")
    assert data.train.digest() != first


def test_missing_or_malformed_trees_are_one_line_errors_naming_the_path(tmp_path, home):
    cases = []
    for dataset in ("imagefolder", "imagenet", "sun397"):
        with pytest.raises(EnstuneError) as err:
            load_task_data(Task(dataset=dataset, data_dir=str(tmp_path / "nowhere")), home)
        cases.append(str(err.value))
    _tree(tmp_path / "only" / "train", ["a"], 1)
    with pytest.raises(EnstuneError) as err:
        load_task_data(Task(dataset="imagefolder", data_dir=str(tmp_path / "only")), home)
    cases.append(str(err.value))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(EnstuneError) as err:
        load_task_data(Task(dataset="imagenet", data_dir=str(tmp_path / "empty")), home)
    cases.append(str(err.value))
    assert all("\n" not in c for c in cases)
    assert str(tmp_path / "nowhere" / "train") in cases[0] and str(tmp_path / "nowhere" / "SUN397") in cases[2]
    assert str(tmp_path / "only" / "test") in cases[3] and str(tmp_path / "empty" / "train") in cases[4]


def test_carve_of_a_folder_split_matches_carve_validation(tmp_path):
    split = FolderSplit(tmp_path, [f"f{i}.jpg" for i in range(10)], torch.arange(10))
    train, val = carve_validation(split, 0.3, 4)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    assert val.files == [f"f{i}.jpg" for i in perm[:3].tolist()] and train.y.tolist() == perm[3:].tolist()


def test_ranks_share_out_each_batch_exactly_and_folders_decode_only_their_share(tmp_path, home):
    # Two DDP ranks draw the same batches: their shares, put side by side, are the whole batch,
    # images and augmentation included; a batch too small to give each rank two examples is left out.
    _tree(tmp_path / "train", ["a", "b", "c"], 4)
    _tree(tmp_path / "val", ["a", "b", "c"], 1)
    data = load_task_data(Task(dataset="imagefolder", data_dir=str(tmp_path), val_fraction=0.25, options={"workers": 0}), home)
    aug = Augmentation("randaugment", 2, 9)
    for split in (data.train.bind(CPU, P32, aug), _ramp_split(11).bind(CPU, P224, Augmentation())):
        whole = list(split.batches(4, torch.Generator().manual_seed(3)))
        shares = [list(split.shard(rank, 2).batches(4, torch.Generator().manual_seed(3))) for rank in (0, 1)]
        kept = [b for b in whole if len(b[1]) >= 4]
        assert len(kept) < len(whole) and all(len(s) == len(kept) for s in shares)
        # the training loop's schedule counts the steps the ranks take, not those of one process
        assert steps_per_epoch(len(split), 4, 2) == len(kept)
        assert steps_per_epoch(len(split), 4) == len([b for b in whole if len(b[1]) >= 2])
        for (x, y), (x0, y0), (x1, y1) in zip(kept, *shares):
            assert len(y0) == len(y1) == len(y) // 2
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    # the folder split's loader is handed this rank's files alone, so the other half is never decoded
    folders = data.train.bind(CPU, P32, aug)
    loader = folders._loader(None, list(range(len(folders))), 4, 0, (1, 2))
    assert [list(b) for b in loader.batch_sampler] == [[2, 3], [6, 7]]  # 9 files: batches of 4, 4 (and 1, left out)


@pytest.mark.parametrize(("n", "batch", "world", "steps"), [
    (10, 4, 1, 3), (9, 4, 1, 2), (1, 4, 1, 0), (8, 1, 1, 0), (8, 3, 2, 0), (8, 4, 2, 2), (10, 4, 2, 2), (11, 4, 2, 2), (12, 5, 2, 2), (14, 5, 2, 3), (91, 45, 2, 2), (99, 45, 2, 3),
    (14, 6, 3, 2), (3, 4, 2, 0)])
def test_steps_per_epoch_leave_out_what_ranks_cannot_share(n, batch, world, steps):
    # a batch with fewer than two examples per rank is not trained on (BatchNorm needs two), nor in one process
    assert steps_per_epoch(n, batch, world) == steps
