"""Pruning that compares a trial only with trials of its own method, and only where it differs."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from enstune.methods import get_method


class _SameMethod:
    """A read-only view of a study that shows only the trials of one method."""

    def __init__(self, study: optuna.Study, method: str, default: str) -> None:
        self._study, self._method, self._default = study, method, default

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get("method", self._default) == self._method]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class MethodAwarePruner(optuna.pruners.BasePruner):
    """Wraps an Optuna pruner; never judges steps whose value is shared by all trials of a method."""

    def __init__(self, inner: optuna.pruners.BasePruner, default_method: str) -> None:
        self._inner, self._default = inner, default_method

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        method = trial.params.get("method", self._default)
        if step is None or step <= get_method(method).shared_members:
            return False
        return self._inner.prune(_SameMethod(study, method, self._default), trial)
