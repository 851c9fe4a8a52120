"""The regularizer term of a member job: its Context built from earlier members, the checkpoints and the source task."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from enstune.checkpoints import Checkpoints
from enstune.data import TaskData
from enstune.errors import EnstuneError
from enstune.methods import MemberJob
from enstune.models import classifier_prefix, create_model, load_checkpoint
from enstune.recipe import Augmentation
from enstune.regularizers import Context, get_regularizer
from enstune.regularizers.ewc import fisher_diagonal
from enstune.settings import resolved
from enstune.training import ExtraLoss

State = dict[str, torch.Tensor]


def check_tap(model: nn.Module, tap: str, name: str) -> None:
    """Fail unless ``tap`` ("" : the head's input) is a module of ``model`` (called ``name``)."""
    if tap and tap not in dict(model.named_modules()):
        raise EnstuneError(f"tap {tap!r} is not a module of {name}")


class Terms:
    """Builds the weighted regularizer term of each member job of one task."""

    def __init__(self, data: TaskData, checkpoints: Checkpoints,
                 build: Callable[[State, torch.device], nn.Module]) -> None:
        self.data, self.checkpoints, self.build = data, checkpoints, build
        self._fishers: dict[int, tuple[State, State]] = {}

    def extra(self, job: MemberJob, refs: dict[int, State], model: nn.Module, device: torch.device) -> ExtraLoss | None:
        """The weighted term of ``job`` training ``model``, or None (no regularizer, or alpha 0: the plain member)."""
        if job.regularizer == "none" or job.alpha == 0:
            return None
        source = self.data.source
        checkpoint = job.checkpoint if job.checkpoint is not None else 0
        pretrained = None if source is None else (lambda: self.fisher(checkpoint, source))
        check_tap(model, job.tap, self.checkpoints.task.model)
        regularizer = get_regularizer(job.regularizer)
        ctx = Context(refs, lambda state: self.build(state, device), classifier_prefix(model), job.seed, pretrained,
                      job.tap, resolved(dict(job.reg_options), regularizer.settings))  # every setting, defaults too
        term = regularizer.make(ctx)
        return lambda model, x, y, features, logits: job.alpha * term(model, x, y, features, logits)

    def fisher(self, index: int, source: TaskData) -> tuple[State, State]:
        """Pre-trained checkpoint ``index`` and its diagonal Fisher on the source task (once per worker)."""
        if index not in self._fishers:
            model = create_model(self.checkpoints.task.model, source.num_classes)
            model.load_state_dict(load_checkpoint(self.checkpoints.path(index)))
            train = source.train.bind(torch.device("cpu"), None, Augmentation("none"))
            self._fishers[index] = (model.state_dict(), fisher_diagonal(model, train, seed=index))
        return self._fishers[index]
