"""The method registry; implementations import this, not the package."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from enstune.methods._base import TRAINING_MAKERS, Bench, MemberResult, Made, Maker, MemberJob
from enstune.registry import Registry

if TYPE_CHECKING:
    from enstune.methods._base import Method

METHODS: Registry[Method] = Registry("method")
MAKERS: Registry[Maker] = Registry("maker")
OPTIMIZER = "optimizer/"  # the prefix of a job's optimizer state among its extras


def register_method(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under ``cls.name``."""
    METHODS.add(cls.name, cls())
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


def get_method(name: str) -> Method:
    """The method called ``name``."""
    return METHODS.get(name)


def register_maker(name: str, trains: bool = False):  # noqa: ANN201 - a decorator
    """Register ``make(bench, job, model, parent, refs) -> Made`` under ``name``; ``trains``: it runs the training loop."""
    if trains:
        TRAINING_MAKERS.add(name)
    return MAKERS.register(name)


def get_maker(name: str) -> Maker:
    """The maker called ``name``."""
    return MAKERS.get(name)


@register_maker("train", trains=True)
def train_job(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """The one training loop; options ``span`` (train epochs [a, b) of the recipe's schedule) and
    ``carry_optimizer`` (start from the parent's optimizer state, e.g. its momentum, and keep this job's)."""
    carry = bool(job.option("carry_optimizer", False))
    start = unflatten_optimizer(parent.extras) if carry and parent is not None else None
    stats = bench.train(model, job, span=job.option("span"), optimizer_state=start)
    return Made(stats.epochs, flatten_optimizer(stats.optimizer_state) if carry else {})


def flatten_optimizer(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An optimizer's state by parameter name (``TrainStats.optimizer_state``) as flat CPU tensors."""
    return {f"{OPTIMIZER}{param}/{name}": torch.as_tensor(v).detach().cpu().clone()
            for param, entry in state.items() for name, v in entry.items()}


def unflatten_optimizer(extras: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]] | None:
    """``flatten_optimizer``'s inverse over a job's extras; None when they hold no optimizer state."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in extras.items():
        if key.startswith(OPTIMIZER):
            param, name = key[len(OPTIMIZER):].rsplit("/", 1)
            out.setdefault(param, {})[name] = value.clone()  # the optimizer steps its state in place
    return out or None
