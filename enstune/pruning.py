"""A study's sampler and pruner by name; pruning compares a trial only with its own method's, only where it differs.

Intermediate values are ensemble accuracies by ensemble size, so a pruner's resource is the number of
members. Every pruner is wrapped in ``MethodAwarePruner``: a method's first ``shared_members`` steps
are the same for all its trials (member 1 of SSE and StarSSE is the ×1 fine-tune), so the resource
of successive halving and Hyperband starts one member above them.

An ensemble's curve over its size is not a learning curve: a diverse trial starts weak and gains
most, so pruners that compare partial values (median, halving, Hyperband) are biased against the
settings the StarSSE paper is about. ``bound`` (the templates' default) cuts a trial only when the
best its K members can still reach is below what the best trial surely has (``enstune.forecast``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from enstune.config import StudySpec
from enstune.forecast import Z, Bounds, trial_bounds
from enstune.methods import get_method
from enstune.registry import Registry
from enstune.storage.optuna_private import storage_of, study_id

# name -> sampler of a study; name -> (spec, the first step a method may be judged at) -> pruner of one method
SAMPLERS: Registry[Callable[[StudySpec], optuna.samplers.BaseSampler]] = Registry("sampler")
PRUNERS: Registry[Callable[[StudySpec, int], optuna.pruners.BasePruner]] = Registry("pruner")


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler that study ``spec`` names."""
    return SAMPLERS.get(spec.sampler)(spec)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner that study ``spec`` names, judging each method only against itself."""
    inner = PRUNERS.get(spec.pruner)
    return MethodAwarePruner(lambda first: inner(spec, first), spec.method)


def _random(spec: StudySpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=spec.seed)


# A grid study queues every point at create (study.grid_points): its trials carry fixed parameters
# and no sampler chooses one. Optuna's GridSampler would only get in the way: on a grid of one
# point its after_trial fails on the queued trial ("grid_id").
SAMPLERS.add("grid", _random)
SAMPLERS.add("random", _random)


def _startup(spec: StudySpec) -> int:
    # Random trials before a model picks: a third of the study, at most Optuna's default of 10 (which
    # would leave a study of 16 trials or fewer mostly random).
    return min(10, max(3, spec.n_trials // 3))


@SAMPLERS.register("tpe")
def _tpe(spec: StudySpec) -> optuna.samplers.BaseSampler:
    # TPE learns from pruned trials too (ranked below the completed ones): a cheap cut still teaches it.
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=_startup(spec)) if spec.space else _random(spec)


@SAMPLERS.register("gp")
def _gp(spec: StudySpec) -> optuna.samplers.BaseSampler:
    # Fits completed trials only: under a pruner that cuts most trials it stays near its random start.
    return optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=_startup(spec)) if spec.space else _random(spec)


@PRUNERS.register("none")
def _none(spec: StudySpec, first: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


@PRUNERS.register("median")
def _median(spec: StudySpec, first: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup_trials, n_warmup_steps=0)


@PRUNERS.register("halving")
def _halving(spec: StudySpec, first: int) -> optuna.pruners.BasePruner:
    # Rungs at ensemble sizes first, 2·first, 4·first…: a trial goes on while in the better half of its rung.
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=2)


@PRUNERS.register("hyperband")
def _hyperband(spec: StudySpec, first: int) -> optuna.pruners.BasePruner:
    # Brackets of successive halving starting at first, 2·first…; some trials run to more members before a cut.
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(spec.members, first),
                                         reduction_factor=2)


class EnsembleBoundPruner(optuna.pruners.BasePruner):
    """Cuts a trial when its ensemble's optimistic K-member accuracy is below every other trial's pessimistic one.

    A trial's bounds come from its partial ensemble (``enstune.forecast``: its validation accuracy,
    how contested its answers are, how many members are still to come). A completed trial's
    bounds are its value; a running one's, its own forecast. Nothing is cut before one bound is
    known, and a trial whose members could still reach the best trial runs on, however weak its
    partial ensemble looks.
    """

    def __init__(self, z: float = Z) -> None:
        if not 0 < z < float("inf"):
            raise ValueError(f"z must be a finite number > 0, got {z=}")
        self.z = z

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` cannot reach what the best of ``study``'s other trials is sure to have."""
        mine = _bounds(trial, self.z)
        floor = self.floor(study, trial.number)
        return mine is not None and floor is not None and mine.upper < floor

    def floor(self, study: optuna.Study, skip: int | None = None) -> float | None:
        """The highest pessimistic accuracy among ``study``'s completed and running trials (but ``skip``)."""
        best = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == skip:
                continue
            if t.state == TrialState.COMPLETE:
                sure = t.value if t.value is not None and math.isfinite(t.value) else None
            else:
                b = _bounds(t, self.z)
                sure = b.lower if b is not None else None
            if sure is not None and (best is None or sure > best):
                best = sure
        return best


def _bounds(trial: FrozenTrial, z: float) -> Bounds | None:
    """A running trial's bounds: its last reported ensemble accuracy and the evidence recorded with it."""
    contested = trial.user_attrs.get("val_contested") or []
    value = trial.intermediate_values.get(len(contested)) if contested else None
    return trial_bounds(trial.user_attrs, accuracy=value, z=z) if value is not None else None


@PRUNERS.register("bound")
def _bound(spec: StudySpec, first: int) -> optuna.pruners.BasePruner:
    return EnsembleBoundPruner()


def _unshared(trial: FrozenTrial, first: int) -> FrozenTrial:
    """``trial`` without its values at shared steps: a median of best-so-far values must not see member 1."""
    seen = copy.copy(trial)
    seen.intermediate_values = {k: v for k, v in trial.intermediate_values.items() if k >= first}
    return seen


class _OneMethodStorage:
    """A study's storage as one method's pruner sees it: that method's trials, from their first judged step."""

    def __init__(self, storage: Any, keep: Callable[[FrozenTrial], bool], first: int) -> None:
        self._storage, self._keep, self._first = storage, keep, first

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        """The trials of the study that belong to the method."""
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [_unshared(t, self._first) for t in trials if self._keep(t)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


class _SameMethod:
    """A read-only view of a study as one method's pruner sees it (see ``_OneMethodStorage``).

    Its storage filters too: Hyperband reads trials through a study of its own on ``study._storage``.
    """

    def __init__(self, study: optuna.Study, keep: Callable[[FrozenTrial], bool], first: int) -> None:
        self._study = study
        self._storage = _OneMethodStorage(storage_of(study), keep, first)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        """The method's trials."""
        return self._storage.get_all_trials(study_id(self._study), deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class MethodAwarePruner(optuna.pruners.BasePruner):
    """One Optuna pruner per method, judging a trial against its method's trials, never by its shared steps.

    ``make_inner(first)`` builds a method's pruner, where ``first`` is the first step whose value
    depends on the trial's parameters (one above the method's shared members).
    """

    def __init__(self, make_inner: Callable[[int], optuna.pruners.BasePruner], default_method: str) -> None:
        self._make_inner, self._default = make_inner, default_method
        self._inner: dict[str, optuna.pruners.BasePruner] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial``'s last reported step is worse than its method's pruner allows."""
        step = trial.last_step
        method = trial.params.get("method", self._default)
        first = get_method(method).shared_members + 1
        if step is None or step < first:
            return False
        if method not in self._inner:  # each keeps its own state (Hyperband's brackets, halving's resource)
            self._inner[method] = self._make_inner(first)
        view = _SameMethod(study, lambda t: t.params.get("method", self._default) == method, first)
        return self._inner[method].prune(view, _unshared(trial, first))
