"""A failed trial's point queued again: interruptions never count against the retry limit, a trial's own errors do.

A point's attempts form a chain of trials: each retry is a WAITING trial with the same parameters
whose system attributes name the first attempt (``failed_trial``, as Optuna's
``RetryHeartbeatStaleTrialCallback`` writes it), every earlier one (``retry_history``), its own
number of attempt (``attempt``) and the errors its point has raised so far (``errors``). A worker
records what its trial raised as the trial's system attribute ``error`` before the trial fails;
a trial failed without one was interrupted (a signal, a dead or silent worker, a lost storage),
and its retry costs the point nothing. A point whose trials raised more than ``MAX_RETRY`` errors
is not queued again: it failed for good, until ``enstune study requeue`` queues it once more. A point
whose trials were interrupted ``MAX_INTERRUPTIONS`` times (a member that kills its worker every time,
as the OOM killer does) failed for good too: interruptions cost nothing one by one, yet without end
they would hold the study forever.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from enstune.errors import EnstuneError

MAX_RETRY = 3  # errors a trial's point may raise and still be queued again; interruptions never count
# Interruptions of one point after which it is not queued again: far more than pre-emptions or
# restarts ever cut one point short, so only a point that kills its worker every time reaches it.
MAX_INTERRUPTIONS = 20

ERROR_ATTR = "error"  # system attribute of a failed trial: what its own work raised (one line)
ERRORS_ATTR = "errors"  # system attribute of a retry: the errors its point raised so far
ATTEMPT_ATTR = "attempt"  # system attribute of a retry: its attempt at the point (the first trial is attempt 1)
INTERRUPTIONS_ATTR = "interruptions"  # system attribute of a retry: its point's attempts cut short so far
OVER_BUDGET = "over_budget"  # user attribute of a trial refused for the budget: no point of its own


class StorageUnavailable(EnstuneError):
    """The storage cannot be read or written now (gone, full): no fault of the trial's."""


def attempt(trial: FrozenTrial) -> int:
    """Which attempt at its point ``trial`` is (1 for the first)."""
    return int(trial.system_attrs.get(ATTEMPT_ATTR, len(trial.system_attrs.get("retry_history", [])) + 1))


def errors(trial: FrozenTrial) -> list[str]:
    """The errors ``trial``'s point raised in its attempts so far, this trial's own included once it failed."""
    before = list(trial.system_attrs.get(ERRORS_ATTR, []))
    own = trial.system_attrs.get(ERROR_ATTR)
    return before + ([own] if own is not None and trial.state == TrialState.FAIL else [])


def interruptions(trial: FrozenTrial) -> int:
    """How many attempts at ``trial``'s point were cut short (a signal, a dead or silent worker), this one included
    once it failed without an error of its own."""
    before = trial.system_attrs.get(INTERRUPTIONS_ATTR)
    if before is None:  # a chain begun before the count was kept: every attempt that raised nothing
        before = attempt(trial) - 1 - len(trial.system_attrs.get(ERRORS_ATTR, []))
    own = trial.state == TrialState.FAIL and trial.system_attrs.get(ERROR_ATTR) is None
    return max(int(before), 0) + int(own)


def requeue(study: optuna.Study, trial: FrozenTrial, fresh: bool = False) -> FrozenTrial | None:
    """Queue failed ``trial``'s point again; the retry, or None when its errors or interruptions reached their limit.

    ``fresh``: its counts of errors and interruptions start again (a person asked for it).
    """
    raised = [] if fresh else errors(trial)
    cut = 0 if fresh else interruptions(trial)
    if len(raised) > MAX_RETRY or cut >= MAX_INTERRUPTIONS:
        return None
    system: dict[str, Any] = {k: v for k, v in trial.system_attrs.items() if k != ERROR_ATTR}
    system.update({"failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                   "retry_history": [*trial.system_attrs.get("retry_history", []), trial.number],
                   ATTEMPT_ATTR: attempt(trial) + 1, ERRORS_ATTR: raised, INTERRUPTIONS_ATTR: cut})
    template = optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                         distributions=trial.distributions, user_attrs=trial.user_attrs,
                                         system_attrs=system)
    from enstune.storage.optuna_private import storage_of, study_id

    created = storage_of(study).create_new_trial(study_id(study), template)
    return storage_of(study).get_trial(created)


class Requeue:
    """The storage's stale-trial callback: a silent or dead worker's trial is queued again, at no cost to its point."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial)


def failed_for_good(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials whose point is queued nowhere: no later attempt follows them (over-budget ones aside)."""
    followed = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in followed
            and not t.user_attrs.get(OVER_BUDGET)]


def why(trial: FrozenTrial) -> str:
    """Why failed ``trial``'s point is not queued again, in words."""
    raised = errors(trial)
    if len(raised) > MAX_RETRY:
        return f"{len(raised)} errors, the last: {raised[-1]}"
    if (cut := interruptions(trial)) >= MAX_INTERRUPTIONS:
        return (f"interrupted {cut} times (its worker stopped or died each time, as the out-of-memory killer ends "
                f"one)" + (f"; its last error: {raised[-1]}" if raised else ""))
    return "interrupted and never queued again" if not raised else f"not queued again after: {raised[-1]}"
