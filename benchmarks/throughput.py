"""Training throughput at the backbones' own resolution: enstune's loop against a bare one, and the streaming loader.

For each backbone (random weights, built offline) it prints, measured in one run:
  - seconds per training step of ``enstune.training.train`` on CIFAR-sized uint8 images held on
    the device and cropped/resized there to the backbone's input, and of a bare hand-written loop
    (forward, cross-entropy, backward, SGD step) on one float batch already at that input;
    their ratio is what the loop, the schedule and the on-device augmentation cost;
  - images per second of the streaming folder loader (JPEG decoding, RandomResizedCrop, flip in
    DataLoader workers) against the images per second the model trains at.

    .venv/bin/python benchmarks/throughput.py [--device cuda:0] [--batch 8] [--steps 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from enstune.data import TensorSplit
from enstune.data.folders import FolderSplit
from enstune.data.images import image_transforms
from enstune.models import create_model, preprocess
from enstune.recipe import Augmentation, Recipe
from enstune.training import autocast, train

MODELS = ("resnet50.tv_in1k", "swin_tiny_patch4_window7_224.ms_in1k", "open_clip:ViT-B-32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def enstune_step(name: str, device: torch.device, batch: int, steps: int) -> float:
    """Seconds per step of the one training loop over device-resident uint8 32×32 images (one epoch of ``steps``)."""
    model = create_model(name, 100).to(device)
    x = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    data = TensorSplit(x, torch.arange(len(x)) % 100, image_transforms).bind(device, preprocess(model), Augmentation())
    _sync(device)
    start = time.perf_counter()
    train(model, data, Recipe(epochs=1, lr=1e-3, batch_size=batch), seed=0)
    _sync(device)
    return (time.perf_counter() - start) / steps


def bare_step(name: str, device: torch.device, batch: int, steps: int) -> float:
    """Seconds per step of a hand-written loop on one float batch already at the model's input."""
    model = create_model(name, 100).to(device).train()
    size = preprocess(model).size
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.arange(batch, device=device) % 100
    _sync(device)
    start = time.perf_counter()  # timed as the loop above: from the fresh optimizer to the last step
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def jpeg_tree(root: Path, n: int) -> list[str]:
    """``n`` JPEGs of ImageNet's typical size (500×375) in two class folders."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = root / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Smooth noise compresses like a photograph, not like white noise.
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(path, quality=90)
        files.append(str(path.relative_to(root)))
    return files


def loader_rate(device: torch.device, batch: int, workers: int, images: int) -> float:
    """Training images per second of the streaming folder loader at 224."""
    with tempfile.TemporaryDirectory() as tmp:
        files = jpeg_tree(Path(tmp), images)
        split = FolderSplit(Path(tmp), files, torch.tensor([int(f[1]) for f in files]), workers=workers)
        bound = split.bind(device, preprocess(create_model(MODELS[0], 2)), Augmentation())
        seen, start = 0, time.perf_counter()
        for x, _ in bound.batches(batch, torch.Generator().manual_seed(0)):
            seen += len(x)
        _sync(device)
        return seen / (time.perf_counter() - start)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=192, help="JPEGs the loader streams")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, {args.steps} steps (the first included) x 2 runs, torch threads "
          f"{torch.get_num_threads()}; ratio = bare s/step / enstune s/step")
    rate = loader_rate(device, args.batch, args.workers, args.images)
    print(f"streaming loader, {args.workers} workers: {rate:.1f} img/s (JPEG 500x375 -> 224)")
    for name in MODELS:
        # Alternated, twice each: on a shared machine the order of two runs would otherwise bias their ratio.
        runs = [(bare_step if i % 2 == 0 else enstune_step)(name, device, args.batch, args.steps) for i in range(4)]
        bare, ours = (runs[0] + runs[2]) / 2, (runs[1] + runs[3]) / 2
        print(f"{name:40s} enstune {ours:.3f} s/step, bare {bare:.3f} s/step, ratio {bare / ours:.3f} "
              f"(enstune at {args.batch / ours:.1f} img/s; loader/model {rate * ours / args.batch:.1f}x)")


if __name__ == "__main__":
    main()
