"""The one training loop: any member job, any device, per-step schedule, mixed precision on CUDA.

When the process is one rank of a ``torch.distributed`` group, the loop trains the network as
DistributedDataParallel: every rank draws the same global batch, takes its share of the examples,
and weighs its loss so that the averaged gradient is the whole batch's.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from enstune.data._base import MIN_SHARE, Split, steps_per_epoch
from enstune.errors import DivergedError, EnstuneError
from enstune.optim import make_optimizer
from enstune.recipe import Recipe
from enstune.schedules import get_schedule

# on_epoch(epoch, epochs, mean train loss)
EpochCallback = Callable[[int, int, float], None]
# extra(model, x, y, head input features, logits) -> a weighted loss term added to the cross-entropy
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


_STOP: list[Callable[[], None]] = []  # checks in force (``stop_when``), run before every step of this process


@contextlib.contextmanager
def stop_when(check: Callable[[], None]) -> Iterator[None]:
    """Within: ``check()`` runs before every training step of this process (and at ``check_stop``) and may raise.

    The worker's check raises once its trial was failed elsewhere, so the member in progress stops
    within a step rather than training on for nothing.
    """
    _STOP.append(check)
    try:
        yield
    finally:
        _STOP.remove(check)


def check_stop() -> None:
    """Run the checks in force (``stop_when``); whatever one raises stops the work in progress."""
    for check in tuple(_STOP):
        check()


@dataclass(frozen=True)
class TrainStats:
    """What one training run cost and reached."""

    epochs: int
    steps: int
    seconds: float
    final_loss: float
    optimizer_state: Any = None  # the optimizer's state at the end by parameter name (momentum buffers, say)


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: full fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    # bf16 where the GPU computes in it (Ampere on); torch's own check also says yes where bf16 is only emulated.
    if precision == "fp16" or (precision == "auto" and torch.cuda.get_device_capability(device) < (8, 0)):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast to ``precision``'s dtype on ``device`` (bf16 on CUDA by default), nothing in fp32."""
    dtype = amp_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def fast_kernels(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution for each shape and matmuls run in TF32 on a GPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_steps(data: Split, batch_size: int) -> int:
    """Optimizer steps in one epoch of the loop on ``data``: a last batch too small to give each rank two examples
    is left out (one process too: BatchNorm cannot train on one example)."""
    world = rank_and_world()[1]
    steps = steps_per_epoch(len(data), batch_size, world)
    if steps == 0:
        raise EnstuneError(f"batches of {batch_size} of {len(data)} examples over {world} process(es) give no "
                           f"process {MIN_SHARE} examples: use a larger batch_size or a smaller --per-member")
    return steps


def _channels_last(model: nn.Module, recipe: Recipe) -> bool:
    """Whether ``model`` trains in channels-last format: a convolutional network (cuDNN's and oneDNN's fast layout)."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return recipe.channels_last and convs > 1  # a ViT's patch embedding is one convolution


def train(
    model: nn.Module,
    data: Split,
    recipe: Recipe,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    extra: ExtraLoss | None = None,
    frozen: Sequence[nn.Module] = (),
    tap: str = "",
    span: tuple[int, int] | None = None,
    optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None,
    after_step: Callable[[nn.Module, float], None] | None = None,
    ce_weight: float = 1.0,
) -> TrainStats:
    """Train ``model`` in place on ``data`` (bound to the model's device) with a fresh optimizer.

    ``frozen`` modules keep their weights (left out of the optimizer) and, for BatchNorm, their
    running statistics (kept in eval mode). ``extra`` sees the output of module ``tap`` (default:
    the head's input, the pooled embedding) from the same forward pass. ``span`` trains epochs
    [a, b) of the recipe's schedule only; ``optimizer_state`` starts the optimizer from another
    run's per-parameter state (momentum carried along a trajectory); ``after_step(model, lr)``
    runs after every optimizer step; ``ce_weight`` weighs the cross-entropy against ``extra``.
    """
    for m in frozen:
        m.requires_grad_(False)
    start = time.perf_counter()
    device = next(model.parameters()).device
    fast_kernels(device)
    rank, world = rank_and_world()
    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, recipe)
    # The optimizer's state by parameter name, not position: a job with frozen stages optimizes fewer.
    name_of = {id(p): n for n, p in model.named_parameters()}
    order = [name_of[id(p)] for group in opt.param_groups for p in group["params"]]
    if optimizer_state is not None:
        state = {i: optimizer_state[n] for i, n in enumerate(order) if n in optimizer_state}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    first, last = span if span is not None else (0, recipe.epochs)
    if not 0 <= first < last <= recipe.epochs:
        raise ValueError(f"span {span} is not within the recipe's {recipe.epochs} epochs")
    per_epoch = epoch_steps(data, recipe.batch_size)
    total, warmup, offset = recipe.epochs * per_epoch, recipe.warmup(per_epoch), first * per_epoch
    factor = get_schedule(recipe.schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(offset + step, total, warmup))
    model.train()
    for m in frozen:
        m.eval()
    channels_last = _channels_last(model, recipe)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        data = data.shard(rank, world)
    if recipe.compile:
        net = torch.compile(net)
    step = _Step(net, model, recipe, opt, sched, extra, world, len(data), channels_last, after_step, ce_weight)
    features: list[torch.Tensor] = step.features
    hook = tap_features(model, tap, features) if extra else None
    try:
        for epoch in range(first, last):
            mean_loss = _epoch(data, recipe, generator, step)
            if not math.isfinite(mean_loss):
                raise DivergedError(f"loss became {mean_loss} in epoch {epoch + 1}")
            if on_epoch is not None:
                on_epoch(epoch + 1 - first, last - first, mean_loss)
    finally:
        if hook is not None:
            hook.remove()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)  # its state dict as any other member's
    return TrainStats(last - first, (last - first) * per_epoch, time.perf_counter() - start, mean_loss,
                      {order[i]: entry for i, entry in opt.state_dict()["state"].items()})


def tap_features(model: nn.Module, tap: str, into: list[torch.Tensor]) -> Any:
    """Collect the output of module ``tap`` (or, for "", the head's input) on every forward pass; the hook."""
    if tap:
        return model.get_submodule(tap).register_forward_hook(lambda _m, _i, out: into.append(out))
    return model.get_classifier().register_forward_hook(lambda _m, inputs, _o: into.append(inputs[0]))


class _Step:
    """One optimizer step on a batch (this rank's share of it under DDP); returns the weighted loss."""

    def __init__(self, net: nn.Module, model: nn.Module, recipe: Recipe, opt: torch.optim.Optimizer, sched: Any,
                 extra: ExtraLoss | None, world: int, examples: int, channels_last: bool,
                 after_step: Callable[[nn.Module, float], None] | None = None, ce_weight: float = 1.0) -> None:
        self.net, self.model, self.recipe, self.opt, self.sched, self.extra = net, model, recipe, opt, sched, extra
        self.world, self.examples, self.channels_last = world, examples, channels_last
        self.after_step, self.ce_weight = after_step, ce_weight
        self.features: list[torch.Tensor] = []
        device = next(model.parameters()).device
        self.device, self.dtype = device, amp_dtype(device, recipe.precision)
        # fp16 needs its gradients scaled; a disabled scaler passes every call straight through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.taken = 0  # examples of the epoch's global batches so far

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.recipe.precision):
            self.features.clear()
            logits = self.net(x)
            loss = self.ce_weight * F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
            if self.extra is not None:
                loss = loss + self.extra(self.model, x, y, self.features[0], logits)
        if self.world > 1:
            # DDP averages gradients over ranks; shares of unequal size weigh by their examples.
            batch = min(self.recipe.batch_size, self.examples - self.taken)
            self.taken += batch
            loss = loss * (len(y) * self.world / batch)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.after_step is not None:
            self.after_step(self.model, self.opt.param_groups[0]["lr"])
        self.sched.step()
        return loss.detach()


def _epoch(data: Split, recipe: Recipe, generator: torch.Generator, step: _Step) -> float:
    """One epoch; the mean loss (one host sync per epoch: the divergence check and the display share it)."""
    loss_sum: torch.Tensor | float = 0.0
    step.taken = 0
    for x, y in data.training_batches(recipe.batch_size, generator):
        if _STOP:
            check_stop()
        loss_sum = loss_sum + step(x, y)
    if step.world > 1:  # every rank sees the same mean, and so diverges or not together
        loss_sum = torch.as_tensor(loss_sum, dtype=torch.float32, device=step.device)
        dist.all_reduce(loss_sum)
        loss_sum = loss_sum / step.world
    return float(loss_sum) / epoch_steps(data, recipe.batch_size)


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1024, precision: str = "auto") -> torch.Tensor:
    """Class probabilities of ``model`` on ``split`` (float32, on the CPU)."""
    model.eval()
    out = []
    for x, _ in split.batches(batch_size):
        with autocast(x.device, precision):
            logits = model(x)
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out)
