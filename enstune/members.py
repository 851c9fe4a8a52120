"""Runs one member job: initialise, train, predict on val/test; every member goes through the cache."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from enstune.cache import MemberCache, content_key, file_digest, save_atomic, tensor_digest
from enstune.config import Task
from enstune.data import Split, TaskData, load_task_data
from enstune.data._base import batches
from enstune.errors import EnstuneError
from enstune.evaluation.evaluators import BN_SUBSET, Members
from enstune.evaluation.weights import WeightSpace
from enstune.methods import MemberJob
from enstune.models import (classifier_prefix, create_model, from_pretrained, list_models, load_checkpoint,
                            stage_modules)
from enstune.regularizers import Context, get_regularizer
from enstune.regularizers.ewc import fisher_diagonal
from enstune.storage import open_artifacts
from enstune.training import EpochCallback, ExtraLoss, predict, train

PRETRAIN_SEED = 10_000


@dataclass
class MemberResult:
    """A trained member: weights and predictions (CPU tensors), and what it cost."""

    key: str
    state: dict[str, torch.Tensor]
    val_probs: torch.Tensor
    test_probs: torch.Tensor
    epochs: int
    seconds: float
    cached: bool = False


class Workspace:
    """What a worker holds for one task: its data (per device), checkpoint files, the member cache."""

    def __init__(self, task: Task, home: Path, artifacts: Any = None) -> None:
        self.task, self.home = task, Path(home)
        self.data: TaskData = load_task_data(task, self.home)
        self.cache = MemberCache(artifacts if artifacts is not None else open_artifacts())
        self._splits: dict[tuple[str, str], Split] = {}
        self._digests: dict[Path, str] = {}
        self._ood: dict[str, list[Split]] | None = None
        self._fishers: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        if task.model in list_models():
            # The small nets run batches of a few dozen 8x8 images: intra-op threads only add
            # synchronisation, and spin badly when another process holds a core (measured 0.5 s
            # vs 45-80 s per demo pre-training on 2 busy cores).
            torch.set_num_threads(1)

    def preflight(self, tap: str = "", freeze: int = 0) -> None:
        """Fail before a trial is taken on what would fail every trial: network, checkpoints, ``tap``, ``freeze``."""
        model = create_model(self.task.model, self.data.num_classes)
        for index in range(len(self.task.checkpoints)):
            from_pretrained(self.task.model, self.checkpoint(index), self.data.num_classes)
        if tap and tap not in dict(model.named_modules()):
            raise EnstuneError(f"tap {tap!r} is not a module of {self.task.model}")
        stage_modules(model, freeze)

    @functools.cached_property
    def data_digest(self) -> str:
        """Digest of the task's splits: members trained on other data never match a cache key."""
        d = self.data
        return tensor_digest(d.train.x, d.train.y, d.val.x, d.val.y, d.test.x, d.test.y)

    @functools.cached_property
    def _pretrained_tag(self) -> str:
        """Digest of the network, source data and recipe of the task's own checkpoints, for their file names."""
        # A changed network or source task never reuses an old file.
        source, recipe = self.data.source, self.data.pretrain
        assert source is not None and recipe is not None
        return content_key(data=tensor_digest(source.train.x, source.train.y), recipe=dataclasses.asdict(recipe),
                           network=repr(create_model(self.task.model, source.num_classes)))[:12]

    def split(self, name: str, device: torch.device) -> Split:
        """Split ``name`` moved to ``device`` once."""
        key = (name, str(device))
        if key not in self._splits:
            s: Split = getattr(self.data, name)
            self._splits[key] = Split(s.x.to(device), s.y.to(device))
        return self._splits[key]

    def checkpoint(self, index: int) -> Path:
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
            path = self.home / "pretrained" / f"{self.task.dataset}-{self.task.model}-{index}-{self._pretrained_tag}.pt"
            if not path.is_file():
                self._pretrain(index, path)
        return path

    def _pretrain(self, index: int, path: Path) -> None:
        source = self.data.source
        assert source is not None and self.data.pretrain is not None
        torch.manual_seed(PRETRAIN_SEED + index)
        model = create_model(self.task.model, source.num_classes)
        train(model, source.train, self.data.pretrain, seed=PRETRAIN_SEED + index, augment=source.augment)
        # An ordinary checkpoint file: loaded later exactly like a downloaded one.
        save_atomic({"state_dict": model.state_dict(), "model": self.task.model}, path)

    def model_from(self, state: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
        """The task's network with weights ``state``, on ``device``."""
        model = create_model(self.task.model, self.data.num_classes)
        model.load_state_dict(state)
        return model.to(device)

    def evaluation(self, results: list[MemberResult], device: torch.device, seed: int,
                   points: int) -> Members:
        """A trial's members, ready for the evaluators, on ``device``."""
        train = self.split("train", device).sample(BN_SUBSET, seed)

        def bn_batches() -> Iterator[torch.Tensor]:
            # Training-mode inputs (augmented, as BN saw them in training), BN_SUBSET of them even
            # when the labelled set is smaller, the same on every call.
            generator = torch.Generator().manual_seed(seed)
            for _ in range(-(-BN_SUBSET // len(train))):
                for x, _ in batches(train, 256, generator, self.data.augment):
                    yield x

        if self._ood is None and self.data.ood is not None:
            self._ood = self.data.ood()
        return Members([r.state for r in results], [r.val_probs for r in results], [r.test_probs for r in results],
                       train, self.split("val", device), self.split("test", device),
                       WeightSpace(lambda state: self.model_from(state, device), bn_batches), seed, points, self._ood)

    def _extra(self, job: MemberJob, refs: dict[int, MemberResult], model: torch.nn.Module,
               device: torch.device) -> ExtraLoss | None:
        """The weighted regularizer term of ``job`` training ``model``, or None (none, or alpha 0: the plain member)."""
        if job.regularizer == "none" or job.alpha == 0:
            return None
        source = self.data.source
        checkpoint = job.checkpoint if job.checkpoint is not None else 0
        pretrained = None if source is None else (lambda: self._fisher(checkpoint, source))
        if job.tap and job.tap not in dict(model.named_modules()):
            raise EnstuneError(f"tap {job.tap!r} is not a module of {self.task.model}")
        ctx = Context({i: r.state for i, r in refs.items()}, lambda state: self.model_from(state, device),
                      classifier_prefix(model), job.seed, pretrained, job.tap, job.subsample)
        term = get_regularizer(job.regularizer).make(ctx)
        return lambda model, x, y, features, logits: job.alpha * term(model, x, y, features, logits)

    def _fisher(self, index: int, source: TaskData) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pre-trained checkpoint ``index`` and its diagonal Fisher on the source task (once per worker)."""
        if index not in self._fishers:
            model = create_model(self.task.model, source.num_classes)
            model.load_state_dict(load_checkpoint(self.checkpoint(index)))
            self._fishers[index] = (model.state_dict(), fisher_diagonal(model, source.train, seed=index))
        return self._fishers[index]

    def job_key(self, job: MemberJob, parent: MemberResult | None, refs: dict[int, MemberResult] | None = None) -> str:
        """Content key of a job: task, starting point, recipe, seed, and its regularizer with what it reads."""
        if job.checkpoint is not None:
            path = self.checkpoint(job.checkpoint)
            if path not in self._digests:
                self._digests[path] = file_digest(path)
            start = {"checkpoint": self._digests[path]}
        else:
            assert parent is not None
            start = {"parent": parent.key}
        t = self.task
        task = {"dataset": t.dataset, "model": t.model, "val_fraction": t.val_fraction, "split_seed": t.split_seed,
                "data": self.data_digest}
        parts: dict[str, Any] = {"task": task, "start": start, "recipe": dataclasses.asdict(job.recipe),
                                 "seed": job.seed}
        if job.freeze:
            parts["freeze"] = job.freeze
        if job.regularizer != "none" and job.alpha != 0:
            parts["reg"] = {"name": job.regularizer, "alpha": job.alpha, "tap": job.tap, "subsample": job.subsample,
                            "refs": [(refs or {})[r].key for r in job.refs]}
        return content_key(**parts)

    def run(
        self,
        job: MemberJob,
        parent: MemberResult | None,
        device: torch.device,
        on_epoch: EpochCallback | None = None,
        refs: dict[int, MemberResult] | None = None,
    ) -> MemberResult:
        """Train member ``job`` on ``device``, or take it from the cache when any worker trained it."""
        refs = refs or {}
        key = self.job_key(job, parent, refs)
        if (hit := self.cache.get(key)) is not None:
            return MemberResult(key, hit["state"], hit["val"], hit["test"], hit["epochs"], 0.0, cached=True)
        torch.manual_seed(job.seed)  # the new head's initialisation
        if job.checkpoint is not None:
            model = from_pretrained(self.task.model, self.checkpoint(job.checkpoint), self.data.num_classes).to(device)
        else:
            assert parent is not None
            model = self.model_from(parent.state, device)
        stats = train(model, self.split("train", device), job.recipe, seed=job.seed,
                      augment=self.data.augment, on_epoch=on_epoch, extra=self._extra(job, refs, model, device),
                      frozen=stage_modules(model, job.freeze), tap=job.tap)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        result = MemberResult(key, state, predict(model, self.split("val", device)),
                              predict(model, self.split("test", device)), stats.epochs, stats.seconds)
        self.cache.put(key, {"state": state, "val": result.val_probs, "test": result.test_probs,
                             "epochs": stats.epochs})
        return result
