"""Diagonal Fisher information of a pre-trained model on its source task, for EWC (StarSSE paper, App. L)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from enstune.data._base import Split


def fisher_diagonal(model: nn.Module, data: Split, samples: int = 512, seed: int = 0,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """E over source inputs (``data`` bound without augmentation) and labels drawn from the model's own predictions of (d log p(y|x) / dθ)^2.

    Per-example gradients come from ``torch.func`` (vmap of grad); BatchNorm uses its running
    statistics (eval mode), so each example's gradient is its own.
    """
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=g)[:samples]

    def log_likelihood(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (x[None],))
        return -F.cross_entropy(logits, y[None])

    per_example = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for x, _ in data.subset(index).batches(batch_size):
        with torch.no_grad():
            probs = model(x).softmax(1)
        y = torch.multinomial(probs.cpu(), 1, generator=g).squeeze(1).to(x.device)
        for k, v in per_example(params, x, y).items():
            total[k] += v.pow(2).sum(0)
    return {k: v / len(index) for k, v in total.items()}
