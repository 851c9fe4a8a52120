"""Runs one member job: initialise, train, predict on val/test; every member goes through the cache."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from enstune.bench import JobBench
from enstune.cache import MemberCache
from enstune.checkpoints import Checkpoints
from enstune.claims import Claims
from enstune.config import Task
from enstune.data import Split, TaskData, load_task_data
from enstune.errors import EnstuneError
from enstune.member_keys import member_key
from enstune.methods import MemberJob, MemberResult, get_maker
from enstune.models import create_model, list_models, preprocess, stage_modules
from enstune.preprocess import Preprocess
from enstune.recipe import Augmentation, Recipe
from enstune.storage import open_artifacts
from enstune.terms import Terms, check_tap
from enstune.training import EpochCallback, autocast, predict, rank_and_world


class Workspace:
    """What a worker holds for one task: its data (per device), checkpoint files, the member cache."""

    def __init__(self, task: Task, home: Path, artifacts: Any = None, claims: Claims | None = None) -> None:
        self.task, self.home = task, Path(home)
        self.data: TaskData = load_task_data(task, self.home)
        self.cache = MemberCache(artifacts if artifacts is not None else open_artifacts())
        self.claims = claims  # None: every worker that misses the cache trains the member itself
        self.checkpoints = Checkpoints(task, self.home, self.data)
        self._splits: dict[tuple[str, str, Augmentation], Split] = {}
        self._ood: dict[str, list[Split]] | None = None
        self.terms = Terms(self.data, self.checkpoints, self.model_from)
        if task.model in list_models():
            # The small nets run batches of a few dozen 8x8 images: intra-op threads only add
            # synchronisation, and spin badly when another process holds a core (measured 0.5 s
            # vs 45-80 s per demo pre-training on 2 busy cores).
            torch.set_num_threads(1)

    def preflight(self, device: torch.device, recipe: Recipe, tap: str = "", freeze: int = 0) -> None:
        """Fail before a trial is taken on what would fail every trial.

        The artifact store must take a write, every checkpoint must load into the network, ``tap`` and ``freeze`` must exist in it, and one
        real training batch of the recipe's size at the task's resolution must go forward and
        backward on ``device`` (a wrong input size, or a batch too large for the device).
        """
        self.cache.check_writable()
        model = self.checkpoints.backbone(0)
        for index in range(1, len(self.task.checkpoints)):
            self.checkpoints.backbone(index)
        check_tap(model, tap, self.task.model)
        stage_modules(model, freeze)
        model.to(device).train()
        x, y = next(self.split("train", device, recipe.augmentation).batches(recipe.batch_size, torch.Generator()))
        try:
            with autocast(device, recipe.precision):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise EnstuneError(f"{self.task.model} cannot train on a batch of {tuple(x.shape)} from "
                               f"{self.task.dataset} on {device}: {str(exc).splitlines()[0]}") from None
        finally:
            del model, x  # their copies on the device: members start from the backbone's cached weights
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the members' processes train on this GPU too

    @functools.cached_property
    def input_size(self) -> list[int]:
        """The shape of one network input, as members train and are evaluated on it (e.g. [3, 224, 224])."""
        if self.preprocess is not None:  # what the splits are bound at (tests check it with a forward hook)
            return list(self.preprocess.input_size)
        x, _ = next(self.split("val", torch.device("cpu")).batches(1))
        return list(x.shape[1:])

    @functools.cached_property
    def data_digest(self) -> str:
        """Digest of the task's splits: members trained on other data never match a cache key."""
        return self.data.digest()

    @functools.cached_property
    def preprocess(self) -> Preprocess | None:
        """The input the task's backbone expects (None for the demo nets)."""
        found = preprocess(create_model(self.task.model, self.data.num_classes))
        if found is not None and self.task.crop_pct is not None:  # the spec's evaluation crop over the backbone's
            found = dataclasses.replace(found, crop_pct=self.task.crop_pct)
        return found

    def split(self, name: str, device: torch.device, augmentation: Augmentation = Augmentation()) -> Split:
        """Split ``name`` bound to ``device`` at the backbone's input, once per augmentation."""
        key, plain = (name, str(device), augmentation), (name, str(device), Augmentation())
        if plain not in self._splits:
            self._splits[plain] = getattr(self.data, name).bind(device, self.preprocess, Augmentation())
        if key not in self._splits:
            # Rebound from the plain split, already on the device: members of many recipes share one copy.
            self._splits[key] = self._splits[plain].bind(device, self.preprocess, augmentation)
        return self._splits[key]

    def bind(self, split: Split, device: torch.device) -> Split:
        """Any split of this task (an OOD set, say) bound for evaluation on ``device``."""
        return split.bind(device, self.preprocess, Augmentation())

    def model_from(self, state: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
        """The task's network with weights ``state``, on ``device``."""
        model = create_model(self.task.model, self.data.num_classes, self.task.option("drop_path_rate", None))
        model.load_state_dict(state)
        return model.to(device)

    def ood(self) -> dict[str, list[Split]] | None:
        """The task's out-of-distribution test sets by name (None: it has none), built once per worker."""
        if self._ood is None and self.data.ood is not None:
            self._ood = self.data.ood()
        return self._ood

    def job_key(self, job: MemberJob, parent: MemberResult | None, refs: dict[int, MemberResult] | None = None) -> str:
        """Content key of a job (``enstune.member_keys``): where it starts, how it trains, what it reads."""
        start = ({"checkpoint": self.checkpoints.digest(job.checkpoint)} if job.checkpoint is not None
                 else {"parent": parent.key if parent is not None else None})
        return member_key(self.task, self.data_digest, start, job, [(refs or {})[r].key for r in job.refs])

    def run(
        self,
        job: MemberJob,
        parent: MemberResult | None,
        device: torch.device,
        on_epoch: EpochCallback | None = None,
        refs: dict[int, MemberResult] | None = None,
        wait: bool = True,
        train: Callable[..., MemberResult] | None = None,
    ) -> MemberResult:
        """Train member ``job`` on ``device``, or take it from the cache when any worker trained it.

        ``train`` (``Workspace.train``'s signature) trains elsewhere, in other processes. With claims, a
        member another worker is training is waited for (or, without ``wait``, ``Held`` is raised at
        once, so that the caller can do other work first), not trained twice.
        """
        refs = refs or {}
        key = self.job_key(job, parent, refs)
        hit, lease = self.cache.get(key), None
        if hit is None and self.claims is not None:
            lease = self.claims.acquire(key, self.cache.get, wait=wait)
            hit = lease.found
        if hit is not None:
            return MemberResult(key, hit["state"], hit["val"], hit["test"], hit["epochs"], 0.0, cached=True,
                                extras=hit.get("extras", {}))
        with lease or contextlib.nullcontext():  # the claim is completed once the member is in the cache
            result = (train or self.train)(key, job, parent, device, on_epoch, refs)
            entry = {"state": result.state, "val": result.val_probs, "test": result.test_probs, "epochs": result.epochs}
            self.cache.put(key, entry | ({"extras": result.extras} if result.extras else {}))
        return result

    def train(self, key: str, job: MemberJob, parent: MemberResult | None, device: torch.device,
              on_epoch: EpochCallback | None = None, refs: dict[int, MemberResult] | None = None) -> MemberResult | None:
        """Make member ``job`` (content key ``key``) with its maker on ``device`` and predict on val/test; no cache.

        In a process group (a member on several devices), every rank makes it; rank 0 returns the result.
        """
        refs = refs or {}
        start = time.perf_counter()
        torch.manual_seed(job.seed)  # the new head's initialisation
        if job.checkpoint is not None:
            model = self.checkpoints.backbone(job.checkpoint).to(device)
            if self.task.option("drop_path_rate", None) is not None:  # the same weights, the spec's stochastic depth
                model = self.model_from(model.state_dict(), device)
        else:
            assert parent is not None
            model = self.model_from(parent.state, device)
        made = get_maker(job.make)(JobBench(self, job, device, refs, on_epoch), job, model,
                                   parent, refs)
        if rank_and_world()[0] > 0:  # a DDP rank but the first: rank 0 holds the same weights and predicts
            return None
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        precision = job.recipe.precision
        return MemberResult(key, state, predict(model, self.split("val", device), precision=precision),
                            predict(model, self.split("test", device), precision=precision), made.epochs,
                            time.perf_counter() - start, extras=made.extras)
