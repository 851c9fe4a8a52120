"""A task's pre-trained checkpoints: the files it names, or the demo's own, pre-trained on first use."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from enstune.cache import content_key, file_digest, save_atomic
from enstune.config import Task
from enstune.data import TaskData
from enstune.errors import EnstuneError
from enstune.models import classifier_prefix, create_model, from_pretrained
from enstune.recipe import keyed_fields
from enstune.training import train

PRETRAIN_SEED = 10_000


class Checkpoints:
    """Pre-trained checkpoint files of one task, their digests, and backbones loaded from them."""

    def __init__(self, task: Task, home: Path, data: TaskData) -> None:
        self.task, self.home, self.data = task, Path(home), data
        self.head = task.option("head", "new")  # a family without a head setting starts every member from a new one
        self._digests: dict[Path, str] = {}
        self._bodies: dict[int, dict[str, torch.Tensor]] = {}

    def path(self, index: int) -> Path:
        """The file of pre-trained checkpoint ``index``; the demo pre-trains its own on first use."""
        if self.task.checkpoints:
            if index >= len(self.task.checkpoints):
                raise EnstuneError(f"task lists {len(self.task.checkpoints)} checkpoints, the plan needs #{index}")
            path = Path(self.task.checkpoints[index].format(home=self.home))
            if not path.is_file():
                raise EnstuneError(f"pre-trained checkpoint not found: {path}")
            return path
        if self.data.source is None or self.data.pretrain is None:
            raise EnstuneError(f"dataset {self.task.dataset!r} needs task.checkpoints (pre-trained weight files)")
        # Naming (a throwaway model) and pre-training draw random numbers; the caller's draws must not move.
        with torch.random.fork_rng(devices=[]):
            path = self.home / "pretrained" / f"{self.task.dataset}-{self.task.model}-{index}-{self._tag}.pt"
            if not path.is_file():
                self._pretrain(index, path)
        return path

    def digest(self, index: int) -> str:
        """SHA-256 of checkpoint ``index``'s file, read once per worker."""
        path = self.path(index)
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

    def backbone(self, index: int) -> nn.Module:
        """The task's network from checkpoint ``index`` with a new head (the caller seeds its initialisation)."""
        if index not in self._bodies:
            model = from_pretrained(self.task.model, self.path(index), self.data.num_classes,
                                    prefix=self.task.checkpoint_prefix, head=self.head,
                                    class_names=self.data.classes)
            # The file is read (and a zero-shot head computed) once per worker; a new head is drawn per member.
            head = classifier_prefix(model) + "."
            self._bodies[index] = {k: v.clone() for k, v in model.state_dict().items()
                                   if self.head == "zeroshot" or not k.startswith(head)}
            return model
        model = create_model(self.task.model, self.data.num_classes)  # draws the head as from_pretrained does
        missing, _ = model.load_state_dict(self._bodies[index], strict=False)
        assert all(k.startswith(classifier_prefix(model) + ".") for k in missing), missing
        return model

    @functools.cached_property
    def _tag(self) -> str:
        """Digest of the network, source data and recipe of the task's own checkpoints, for their file names."""
        # A changed network or source task never reuses an old file.
        source, recipe = self.data.source, self.data.pretrain
        assert source is not None and recipe is not None
        return content_key(data=source.train.digest(), recipe=keyed_fields(recipe),
                           network=repr(create_model(self.task.model, source.num_classes)))[:12]

    def _pretrain(self, index: int, path: Path) -> None:
        source, recipe = self.data.source, self.data.pretrain
        assert source is not None and recipe is not None
        torch.default_generator.manual_seed(PRETRAIN_SEED + index)  # within path's fork_rng of the CPU
        model = create_model(self.task.model, source.num_classes)
        train(model, source.train.bind(torch.device("cpu"), None, recipe.augmentation), recipe,
              seed=PRETRAIN_SEED + index)
        # An ordinary checkpoint file: loaded later exactly like a downloaded one.
        save_atomic({"state_dict": model.state_dict(), "model": self.task.model}, path)
