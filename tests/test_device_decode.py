"""JPEG decoding on the split's device (here the CPU, the same code as on CUDA) against PIL in the workers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.io import ImageReadMode, decode_jpeg

from enstune.data import steps_per_epoch
from enstune.data.folders import FolderSplit
from enstune.data.jpeg import Reader, image_steps, read_bytes
from enstune.errors import EnstuneError
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation

CPU = torch.device("cpu")
P32 = Preprocess(input_size=(3, 32, 32))
LEVEL = torch.tensor(P32.std)[:, None, None] * 255  # one uint8 level in normalised units, per channel
# Measured on this tree, each image's largest difference in uint8 levels: 1 in evaluation and in plain
# training crops (libjpeg decodes these files as PIL does; the two resamplers round differently), up to 5
# with colour jitter and 6 with RandAugment (their ops on PIL images and on tensors round differently too).
TOLERANCE = 4
SIZES = [(40, 30), (64, 48), (33, 57), (50, 50)]
ODD = {"c0/odd.png": "RGBA", "c1/odd.jpg": "L", "c2/odd_cmyk.jpg": "CMYK"}  # the PIL fallbacks
JITTER = Augmentation(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=0.1)


def _write(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Smooth noise compresses and resamples like a photograph, not like white noise.
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BILINEAR).convert(mode).save(path, quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FolderSplit:
    """30 colour JPEGs of four sizes in three class folders, a PNG, a grey JPEG and a CMYK JPEG (unbound)."""
    root = tmp_path_factory.mktemp("folder")
    files, labels = [], []
    for i in range(30):
        files.append(f"c{i % 3}/img{i}.jpg")
        _write(root / files[-1], SIZES[i % len(SIZES)], "RGB", i)
        labels.append(i % 3)
    for k, (name, mode) in enumerate(ODD.items()):
        _write(root / name, SIZES[k], mode, 100 + k)
        files.append(name)
        labels.append(int(name[1]))
    return FolderSplit(root, files, torch.tensor(labels))


def _bound(tree: FolderSplit, decode: str, augmentation: Augmentation = Augmentation(),
           workers: int = 0) -> FolderSplit:
    split = FolderSplit(tree.root, tree.files, tree.y, workers, decode=decode)
    return split.bind(CPU, P32, augmentation)


def _epoch(split: FolderSplit, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    batches = list(split.batches(8, None if seed is None else torch.Generator().manual_seed(seed)))
    shapes = [(x.shape, x.dtype, x.device, y.dtype) for x, y in batches]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), shapes


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each image's largest difference, in uint8 levels."""
    return ((a - b).abs() * LEVEL).amax(dim=(1, 2, 3))


def test_evaluation_batches_match_pil_in_the_workers_within_decoder_rounding(tree):
    pil, device = _bound(tree, "workers"), _bound(tree, "device")
    assert not pil.on_device and device.on_device
    x0, y0, shapes0 = _epoch(pil)
    x1, y1, shapes1 = _epoch(device)
    assert torch.equal(y1, y0) and y1.tolist() == tree.y.tolist()  # in order, the files' labels
    assert shapes1 == shapes0 and shapes1[0][0] == (8, 3, 32, 32) and shapes1[0][1] == torch.float32
    diff = _levels(x1, x0)
    assert diff.max() <= TOLERANCE and diff.mean() <= 1.5, diff
    # a wrong crop or resize would be tens of levels off: the first image against the second one
    assert _levels(x1[:1], x0[1:2]).item() > 20
    grey = x1[tree.files.index("c1/odd.jpg")] * LEVEL / 255 + torch.tensor(P32.mean)[:, None, None]
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[0], grey[2], atol=1e-5)


def test_training_batches_are_seeded_and_draw_the_crops_of_the_workers_path(tree):
    device, pil = _bound(tree, "device"), _bound(tree, "workers")
    state = torch.get_rng_state()
    x1, y1, _ = _epoch(device, 7)
    x2, y2, _ = _epoch(device, 7)
    x3, y3, _ = _epoch(device, 8)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(y1, y3)
    # the same seed draws the same boxes and flips as PIL in the workers: only rounding apart
    x0, y0, _ = _epoch(pil, 7)
    assert torch.equal(y1, y0) and _levels(x1, x0).max() <= TOLERANCE
    assert (_levels(x3, x0) > 20).float().mean() > 0.5  # another seed, other crops


@pytest.mark.parametrize("augmentation", [Augmentation("randaugment", 2, 9), JITTER], ids=["randaugment", "jitter"])
def test_randaugment_and_jitter_continue_each_examples_stream_in_any_worker(tree, augmentation):
    device = _bound(tree, "device", augmentation)
    x1, y1, _ = _epoch(device, 3)
    x2, y2, _ = _epoch(_bound(tree, "device", augmentation, workers=2), 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    plain, _, _ = _epoch(_bound(tree, "device"), 3)
    assert (_levels(x1, plain) > 20).float().mean() > 0.3  # the augmentation acted
    x0, y0, _ = _epoch(_bound(tree, "workers", augmentation), 3)
    # The same draws as the PIL path: its ops on PIL images and ours on tensors round differently,
    # and a rounding step can move Posterize or Equalize far; most images stay close.
    assert torch.equal(y1, y0) and (_levels(x1, x0) <= 2 * TOLERANCE).float().mean() >= 0.75


def test_files_the_device_decoder_cannot_take_are_decoded_by_pil(tree, tmp_path, monkeypatch):
    read = Reader(image_steps(P32, Augmentation(), train=True))
    colour = read(str(tree.root / tree.files[0]), seed=1)
    assert colour.data.dim() == 1 and bytes(colour.data.numpy()) == (tree.root / tree.files[0]).read_bytes()
    for name in ODD:  # PNG, grey, CMYK: PIL in the worker, as pil_loader reads them
        encoded = read(str(tree.root / name), seed=1)
        with Image.open(tree.root / name) as image:
            rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(encoded.data, rgb)
    # A truncated JPEG: libjpeg refuses it; PIL reads it when told to, and the device path then does too.
    whole = (tree.root / tree.files[0]).read_bytes()
    (tmp_path / "c0").mkdir()
    (tmp_path / "c0" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    for name in ("c0/fine.jpg", "c0/fine2.jpg"):
        (tmp_path / name).write_bytes(whole)
    files = ["c0/fine.jpg", "c0/cut.jpg", "c0/fine2.jpg"]
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        decode_jpeg(read_bytes(str(tmp_path / files[1])), mode=ImageReadMode.RGB)
    split = FolderSplit(tmp_path, files, torch.zeros(3, dtype=torch.long), decode="device").bind(CPU, P32,
                                                                                               Augmentation())
    with pytest.raises(EnstuneError, match=r"cannot decode .*cut\.jpg: image file is truncated"):
        _epoch(split)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    x1, _, _ = _epoch(split)
    x0, _, _ = _epoch(FolderSplit(tmp_path, files, torch.zeros(3, dtype=torch.long), decode="workers").bind(
        CPU, P32, Augmentation()))
    assert _levels(x1, x0).max() <= TOLERANCE
    assert _levels(x1[1:2], x1[:1]).item() > 20  # the cut image is not the whole one


def test_decode_is_checked_kept_by_subsets_and_shards_and_ranks_share_device_batches(tree):
    with pytest.raises(EnstuneError, match="decode must be one of workers, device or auto, got 'gpu'"):
        FolderSplit(tree.root, tree.files, tree.y, decode="gpu")
    assert tree.decode == "auto" and not tree.bind(CPU, P32, Augmentation()).on_device  # auto on a CPU: workers
    device = _bound(tree, "device")
    assert device.subset(torch.arange(5)).on_device and device.shard(0, 2).on_device
    assert device.bind(CPU, P32, Augmentation()).decode == "device"
    whole = list(device.batches(8, torch.Generator().manual_seed(2)))
    shares = [list(device.shard(rank, 2).batches(8, torch.Generator().manual_seed(2))) for rank in (0, 1)]
    kept = whole[:-1]  # 33 files: batches of 8, 8, 8, 8 and 1, too small to share out
    assert len(whole[-1][1]) == 1 and all(len(s) == len(kept) == steps_per_epoch(33, 8, 2) for s in shares)
    for (x, y), (x0, y0), (x1, y1) in zip(kept, *shares):
        assert len(y0) == len(y1) == 4 and torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_one_gpu_decodes_for_every_device_of_a_process(monkeypatch):
    # torchvision holds one nvjpeg decoder per process and rebuilds it on every change of device:
    # evaluation threads on several GPUs decode on the first and copy the images over.
    from enstune.data import jpeg

    monkeypatch.setattr(jpeg, "_decoder_device", [])
    first, second = torch.device("cuda", 1), torch.device("cuda", 0)
    assert jpeg._decoding_device(CPU) == CPU
    assert jpeg._decoding_device(first) == first and jpeg._decoding_device(second) == first
