"""Metrics of predictions: calibration and the paper's prediction diversity (Appendix J)."""

from __future__ import annotations

import itertools

import torch


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``labels`` under ``probs`` (N, C)."""
    picked = probs.gather(1, labels.view(-1, 1).to(probs.device)).squeeze(1)
    return -picked.clamp_min(1e-12).log().mean().item()


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| over ``bins`` equal-width confidence bins."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels.to(probs.device)).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur.
    index = (conf * bins).ceil().long().clamp_(1, bins) - 1
    gap = torch.zeros(bins).index_add_(0, index.cpu(), (correct - conf).cpu())
    return (gap.abs().sum() / len(conf)).item()


def diversity(member_probs: list[torch.Tensor], labels: torch.Tensor) -> float:
    """100 × mean over member pairs of prediction disagreement / max of the two errors (Appendix J)."""
    if len(member_probs) < 2:
        return 0.0
    preds = [p.argmax(dim=1) for p in member_probs]
    errors = [(p != labels.to(p.device)).float().mean().item() for p in preds]
    values = []
    for i, j in itertools.combinations(range(len(preds)), 2):
        disagree = (preds[i] != preds[j]).float().mean().item()
        # Two perfect members cannot disagree: the pair counts as 0, not 0/0.
        values.append(disagree / max(errors[i], errors[j]) if disagree else 0.0)
    return 100.0 * sum(values) / len(values)
