"""Metrics on cached predictions: a member or an ensemble costs no extra forward pass."""

from __future__ import annotations

import torch


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of class probabilities ``probs`` (N, C) against ``labels`` (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return (probs.argmax(dim=1) == labels.to(probs.device)).float().mean().item()


class EnsembleCurve:
    """Accuracy of the ensembles of members 1..k (mean of probabilities), updated member by member."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels.cpu()
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None  # sum of squared probabilities: the members' spread
        self.members: list[float] = []
        self.ensembles: list[float] = []
        self.contested: list[float] = []

    def add(self, probs: torch.Tensor) -> float:
        """Add one member's probabilities; return the accuracy of the ensemble so far."""
        probs = probs.float()
        self._sum = probs.clone() if self._sum is None else self._sum + probs
        self._squares = probs.square() if self._squares is None else self._squares + probs.square()
        self.members.append(accuracy(probs, self.labels))
        self.ensembles.append(accuracy(self.probs(), self.labels))
        self.contested.append(self._contested())
        return self.ensembles[-1]

    def probs(self) -> torch.Tensor:
        """Mean probabilities of the members added so far."""
        if self._sum is None:
            raise ValueError("no member added yet")
        return self._sum / len(self.members)

    def _contested(self) -> float:
        """Share of examples whose answer the members' scatter could flip (see ``enstune.forecast``).

        An example is contested when the ensemble's margin between its top two classes is below
        twice the members' standard deviation (the largest over classes). One member scatters nowhere.
        """
        m = len(self.members)
        if m < 2:
            return 0.0
        mean = self.probs()
        spread = ((self._squares - self._sum * mean) / (m - 1)).clamp(min=0).sqrt().amax(dim=1)
        top = mean.topk(2, dim=1).values if mean.shape[1] > 1 else torch.cat([mean, torch.zeros_like(mean)], 1)
        return ((top[:, 0] - top[:, 1]) < 2 * spread).float().mean().item()


def pack_correct(probs: torch.Tensor, labels: torch.Tensor) -> str:
    """Per-example correctness of ``probs`` as a hex bitset (compact enough for a trial attribute)."""
    bits = "".join("1" if c else "0" for c in (probs.argmax(dim=1) == labels.to(probs.device)).tolist())
    return f"{len(bits)}:" + (format(int(bits, 2), "x") if bits else "0")


def unpack_correct(packed: str) -> list[bool]:
    """The inverse of ``pack_correct``."""
    n, hexa = packed.split(":")
    return [b == "1" for b in format(int(hexa, 16), f"0{int(n)}b")]
