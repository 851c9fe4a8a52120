"""Training throughput at the backbones' resolution: enstune's loop, its loaders, the reference's CIFAR pipeline.

For each backbone (random weights, built offline) it prints, measured in one run:
  - seconds per training step of ``enstune.training.train`` on CIFAR-sized uint8 images held on
    the device and cropped/resized there to the backbone's input, and of a bare hand-written loop
    (forward, cross-entropy, backward, SGD step) on one float batch already at that input;
    their ratio is what the loop, the schedule and the on-device augmentation cost;
  - images per second of the streaming folder loader (JPEG decoding, RandomResizedCrop, flip in
    DataLoader workers) against the images per second the model trains at;
  - the CIFAR pipeline at the backbone's input (224 px): training images per second of enstune's
    device-resident path (uint8 32x32 images on the device, cropped and resized there in batches,
    as a study on CIFAR binds them) against the reference code's pipeline (torchvision's
    RandomResizedCrop/flip/ToTensor/Normalize on PIL images in min(8, CPUs) DataLoader workers,
    batches copied to the device), the same model, batch, device and precision, timed after a
    warm-up; on a GPU the goal is a ratio of at least 3, where the reference's workers, not the
    model, set the pace. A CIFAR-10 in its released layout is written on the fly unless --cifar names one.

  - a member over several devices (``--section ddp --ddp-devices cuda:0,cuda:1``): training images
    per second of one member (the same global batch) on the first device alone, in this process,
    and as DistributedDataParallel over all of them, one process each, as ``study run --per-member``
    trains it; on two GPUs the goal is a ratio of at least 1.8.

  - JPEG decoding (``--section decode``): images per second of the streaming folder loader at 224
    on the same ``--images`` JPEGs (500x375, written on the fly), decoded by PIL in ``--workers``
    DataLoader workers against read there and decoded on ``--device`` in batches
    (``torchvision.io.decode_jpeg``; nvjpeg on CUDA), for training (RandomResizedCrop, flip) and
    evaluation (Resize, CenterCrop) batches; each path timed over two epochs, alternated.

    .venv/bin/python benchmarks/throughput.py [--device cuda:0] [--batch 8] [--steps 3] [--workers 2]
        [--section all|loop|pipeline|ddp|decode] [--model NAME] [--warmup 2] [--cifar DIR] [--cifar-images 1024]
        [--ddp-devices cpu,cpu]
    e.g. on a GPU: --device cuda:0 --section pipeline --batch 256 --steps 100 --warmup 20
             --section ddp --ddp-devices cuda:0,cuda:1 --model resnet50.tv_in1k --batch 256 --steps 50
             --section decode --device cuda:0 --workers 8 --batch 256 --images 4096
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import CIFAR10

from enstune.config import Task
from enstune.data import TensorSplit, load_task_data
from enstune.data.cifar import _lenient
from enstune.data.folders import FolderSplit
from enstune.data.images import image_transforms
from enstune.models import create_model, preprocess
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation, Recipe
from enstune.training import autocast, fast_kernels, train

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
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


def decode_rates(device: torch.device, batch: int, workers: int, images: int) -> None:
    """Print images per second of PIL in the workers and of decoding on ``device``, on the same JPEGs at 224."""
    with tempfile.TemporaryDirectory() as tmp:
        files = jpeg_tree(Path(tmp), images)
        y = torch.tensor([int(f[1]) for f in files])
        print(f"JPEG decoding on {device}: {images} JPEGs 500x375 -> 224, batch {batch}, {workers} workers, "
              f"torch threads {torch.get_num_threads()}")
        for phase, generator in (("train", 0), ("eval", None)):
            seconds = {"workers": 0.0, "device": 0.0}
            for decode in [*seconds] * 2:  # alternated: on a shared machine the order of two runs biases their ratio
                split = FolderSplit(Path(tmp), files, y, workers, decode=decode).bind(device, Preprocess(),
                                                                                     Augmentation())
                gen = None if generator is None else torch.Generator().manual_seed(generator)
                start = time.perf_counter()
                for _ in split.batches(batch, gen):
                    pass
                _sync(device)
                seconds[decode] += time.perf_counter() - start
            rates = {k: 2 * images / v for k, v in seconds.items()}
            print(f"  {phase:5s} PIL in workers {rates['workers']:8.1f} img/s, decoded on {device} "
                  f"{rates['device']:8.1f} img/s, device / workers {rates['device'] / rates['workers']:.2f}x")


def cifar_tree(root: Path, images: int) -> Path:
    """A CIFAR-10 of ``images`` training images in its released layout (torchvision's python pickles) under ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_batch = -(-images // 5)
    for name, n in [*((f"data_batch_{b}", per_batch) for b in range(1, 6)), ("test_batch", 100)]:
        # Rows as released: 1024 red, 1024 green, 1024 blue values of a 32x32 image.
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": (np.arange(n) % 10).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def _whole(batches: Batches, batch: int) -> Batches:
    for x, y in batches:
        if len(y) == batch:  # whole batches only, as drop_last gives the reference
            yield x, y


def enstune_batches(root: Path, model: nn.Module, device: torch.device, batch: int) -> Batches:
    """Training batches of enstune's CIFAR path: the task's training split bound to ``device`` at the model's input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CIFAR written here is not the official release
        data = load_task_data(Task(dataset="cifar10", data_dir=str(root)), root)
    train_split = data.train.bind(device, preprocess(model), Augmentation())  # as Workspace.split binds it
    generator = torch.Generator().manual_seed(0)
    return _whole((b for _ in itertools.count() for b in train_split.batches(batch, generator)), batch)


def reference_batches(root: Path, model: nn.Module, device: torch.device, batch: int,
                      workers: int) -> Batches:
    """Training batches of the reference code's pipeline: PIL transforms in DataLoader workers, copied to ``device``."""
    prep = preprocess(model)
    transform = T.Compose([T.RandomResizedCrop(prep.size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(prep.mean, prep.std)])
    dataset = _lenient(CIFAR10)(str(root), train=True, transform=transform)  # its checksums dropped
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    while True:  # closing the generator frees the loader, which ends its workers
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_rate(name: str, batches: Batches, device: torch.device, batch: int,
               steps: int, warmup: int) -> float:
    """Training images per second of model ``name`` fed by ``batches``: ``steps`` timed after ``warmup`` steps."""
    model = create_model(name, 10).to(device).train()
    fast_kernels(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        x, y = next(batches)
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def pipeline(name: str, device: torch.device, batch: int, steps: int, warmup: int, cifar: Path | None,
             images: int) -> None:
    """Print enstune's CIFAR path against the reference pipeline, and the model fed one resident batch."""
    workers = min(8, os.cpu_count() or 1)
    probe = create_model(name, 10)
    size = "x".join(map(str, preprocess(probe).size))
    with tempfile.TemporaryDirectory() as tmp:
        root = cifar if cifar is not None else cifar_tree(Path(tmp), images)
        print(f"CIFAR pipeline on {device}, {name} at {size}, batch {batch}, {warmup} warm-up + {steps} timed steps, "
              f"data {'in ' + str(root) if cifar is not None else f'written on the fly ({images} training images)'}")
        ours = train_rate(name, enstune_batches(root, probe, device, batch), device, batch, steps, warmup)
        reference = reference_batches(root, probe, device, batch, workers)
        theirs = train_rate(name, reference, device, batch, steps, warmup)
        reference.close()  # ends the loader's workers
    x = torch.randn(batch, 3, *preprocess(probe).size, device=device)
    alone = train_rate(name, itertools.repeat((x, torch.arange(batch, device=device) % 10)), device, batch, steps,
                       warmup)
    rows = [("enstune, on the device", ours), (f"reference, {workers} DataLoader workers", theirs),
            ("model alone, one resident batch", alone)]
    for label, rate in rows:
        print(f"  {label:36s} {rate:8.1f} img/s")
    print(f"  (the reference's steady pace shows in timed steps well beyond its {2 * workers} prefetched batches)")
    print(f"  enstune / reference: {ours / theirs:.2f}x (goal on a GPU: >= 3x)")


def _ddp_rank(rank: int, devices: list[str], address: str, name: str, batch: int, steps: int, out: object) -> None:
    """One rank of a member over ``devices``: enstune's loop, DDP when there are several (as a worker's group)."""
    import torch.distributed as dist

    device, world = torch.device(devices[rank]), len(devices)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=address, rank=rank,
                                world_size=world)
    torch.manual_seed(0)
    model = create_model(name, 100).to(device)
    x = torch.randint(0, 256, (batch * (steps + 1), 3, 32, 32), dtype=torch.uint8)
    data = TensorSplit(x, torch.arange(len(x)) % 100, image_transforms).bind(device, preprocess(model), Augmentation())
    warm = TensorSplit(x[:batch], torch.arange(batch) % 100, image_transforms).bind(device, preprocess(model),
                                                                                   Augmentation())
    recipe = Recipe(epochs=1, lr=1e-3, batch_size=batch)
    train(model, warm, recipe, seed=0)  # one untimed step: cuDNN's choice of kernels, the DDP buckets
    _sync(device)
    start = time.perf_counter()
    train(model, data, recipe, seed=0)
    _sync(device)
    if rank == 0:
        out.put(len(x) / (time.perf_counter() - start))
    if world > 1:
        dist.destroy_process_group()


def ddp(name: str, devices: list[str], batch: int, steps: int) -> None:
    """Images per second of one member on the first device, and over all ``devices`` as DDP."""
    import socket

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    rates = []
    for group in (devices[:1], devices):
        out = ctx.Queue()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        procs = [ctx.Process(target=_ddp_rank, args=(r, group, address, name, batch, steps, out))
                 for r in range(len(group))]
        for p in procs:
            p.start()
        rates.append(out.get())
        for p in procs:
            p.join()
    print(f"{name}: one member, global batch {batch}, {steps} steps: {rates[0]:.1f} img/s on {devices[0]}, "
          f"{rates[1]:.1f} img/s over {','.join(devices)} (DDP); ratio {rates[1] / rates[0]:.2f} "
          f"(goal on two GPUs: >= 1.8)")


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=192, help="JPEGs the loader streams")
    parser.add_argument("--section", choices=("all", "loop", "pipeline", "ddp", "decode"), default="all",
                        help="loop: the training loop and the folder loader; pipeline: CIFAR against the reference; "
                             "ddp: one member over several devices; decode: JPEGs decoded in workers or on the device")
    parser.add_argument("--ddp-devices", default="cpu,cpu", help="the devices of the ddp section's member")
    parser.add_argument("--model", help="one backbone (default: each of MODELS; the first for the pipeline)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the pipeline's timed ones")
    parser.add_argument("--cifar", type=Path, help="a directory with cifar-10-batches-py (default: one written here)")
    parser.add_argument("--cifar-images", type=int, default=1024, help="training images of the CIFAR written here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.section == "decode":
        decode_rates(device, args.batch, args.workers, args.images)
        return
    if args.section in ("all", "ddp"):
        ddp(args.model or MODELS[0], args.ddp_devices.split(","), args.batch, args.steps)
    if args.section == "ddp":
        return
    if args.section in ("all", "pipeline"):
        pipeline(args.model or MODELS[0], device, args.batch, args.steps, args.warmup, args.cifar, args.cifar_images)
    if args.section == "pipeline":
        return
    fast_kernels(device)  # the bare loop runs under the kernel settings enstune's loop sets
    print(f"device {device}, batch {args.batch}, {args.steps} steps (the first included) x 2 runs after an untimed "
          f"step of each, torch threads {torch.get_num_threads()}; ratio = bare s/step / enstune s/step "
          f"(goal on a GPU: >= 0.97)")
    rate = loader_rate(device, args.batch, args.workers, args.images)
    print(f"streaming loader, {args.workers} workers: {rate:.1f} img/s (JPEG 500x375 -> 224)")
    for name in [args.model] if args.model else MODELS:
        # One untimed step of each first: CUDA's lazy start and cuDNN's search of kernels for these shapes
        # (channels-last for enstune's convolutional networks) would otherwise land in one side's first run.
        bare_step(name, device, args.batch, 1)
        enstune_step(name, device, args.batch, 1)
        # Alternated, twice each: on a shared machine the order of two runs would otherwise bias their ratio.
        runs = [(bare_step if i % 2 == 0 else enstune_step)(name, device, args.batch, args.steps) for i in range(4)]
        bare, ours = (runs[0] + runs[2]) / 2, (runs[1] + runs[3]) / 2
        print(f"{name:40s} enstune {ours:.3f} s/step, bare {bare:.3f} s/step, ratio {bare / ours:.3f} "
              f"(enstune at {args.batch / ours:.1f} img/s; loader/model {rate * ours / args.batch:.1f}x)")


if __name__ == "__main__":
    main()
