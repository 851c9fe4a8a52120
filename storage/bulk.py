"""What a worker asks of a storage in one round trip where the storage can: a trial's attributes, a study's census.

Optuna's storage API sets one attribute per call (a transaction on a database, a request through
the storage proxy) and counts a study's trials only by reading them all. A database storage
(``ResilientRDBStorage``) and the storage proxy's client (``ProxyStorage``) do each of these in one
transaction or one request; any other storage falls back to Optuna's calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

Tally = tuple[dict[TrialState, int], "float | None"]  # trials by state; the best finite value of a COMPLETE one


@runtime_checkable
class BulkStorage(Protocol):
    """A storage that writes several attributes of a trial at once and counts a study's trials without reading them."""

    def set_trial_attrs(self, trial_id: int, user: dict[str, Any] | None = None, system: dict[str, Any] | None = None,
                        census_of: tuple[int, bool] | None = None) -> Tally | None:
        """Set a trial's user and system attributes together; with ``census_of``, then count that study too."""

    def census(self, study_id: int, below: int | None = None, maximize: bool = True) -> Tally:
        """A study's trials by state (only those numbered below ``below``, if given) and its best value."""


def native(storage: BaseStorage) -> BaseStorage:
    """The storage that serves the calls: the database under Optuna's cache, or ``storage`` itself."""
    from enstune.storage.optuna_private import uncached

    return uncached(storage)


def set_trial_attrs(storage: BaseStorage, trial_id: int, user: dict[str, Any] | None = None,
                    system: dict[str, Any] | None = None, census_of: tuple[int, bool] | None = None) -> Tally | None:
    """Set trial ``trial_id``'s ``user`` and ``system`` attributes: together where ``storage`` can, else one by one.

    With ``census_of`` = (study id, maximize), also return that study's census (see ``census``)
    where it comes in the same transaction or request; None where it would cost a read of its own.
    """
    if isinstance(served := native(storage), BulkStorage):
        return served.set_trial_attrs(trial_id, user, system, census_of)
    one_by_one(storage, trial_id, user, system)
    return None


def one_by_one(storage: BaseStorage, trial_id: int, user: dict[str, Any] | None = None,
               system: dict[str, Any] | None = None) -> None:
    """Set a trial's ``user`` and ``system`` attributes with Optuna's calls, one per attribute."""
    for key, value in (user or {}).items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in (system or {}).items():
        storage.set_trial_system_attr(trial_id, key, value)


def census(storage: BaseStorage, study_id: int, below: int | None = None, maximize: bool = True) -> Tally:
    """Study ``study_id``'s trials by state (those numbered below ``below``, if given) and its best value."""
    if isinstance(served := native(storage), BulkStorage):
        return served.census(study_id, below, maximize)
    return tally(storage.get_all_trials(study_id, deepcopy=False), below, maximize)


def tally(trials: Iterable[FrozenTrial], below: int | None = None, maximize: bool = True) -> Tally:
    """The census of ``trials`` read whole (see ``census``)."""
    states: dict[TrialState, int] = {}
    values = []
    for t in trials:
        if below is not None and t.number >= below:
            continue
        states[t.state] = states.get(t.state, 0) + 1
        value = t.values[0] if t.values else None
        if t.state == TrialState.COMPLETE and value is not None and math.isfinite(value):
            values.append(value)
    return states, (max(values) if maximize else min(values)) if values else None
