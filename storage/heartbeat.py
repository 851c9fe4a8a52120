"""Heartbeats on the embedded journal, so that a dead worker's trial is failed and retried as on a database.

Optuna's JournalStorage has no heartbeat; this one implements Optuna's ``BaseHeartbeat``, so
that Optuna's own machinery (the heartbeat thread of ``study.optimize``, ``fail_stale_trials``,
``RetryHeartbeatStaleTrialCallback``) works on it unchanged. A heartbeat is a trial system
attribute: the time and who runs the trial (host, pid, the process's start time). A running
trial is stale when its heartbeat is older than two intervals, or at once when its worker ran
on this host and that process is gone (the OOM killer, SIGKILL).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "heartbeat"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _gone(owner: dict[str, Any]) -> bool:
    """Whether the worker process that wrote heartbeat ``owner`` has ended (known only on its own host)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    # The pid lives, but may have been reused by another process since.
    started = owner.get("start")
    return started is not None and _process_start(int(owner["pid"])) not in (started, None)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A JournalStorage whose running trials record heartbeats every ``interval`` seconds."""

    def __init__(self, backend: Any, interval: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        super().__init__(backend)
        self._interval, self._on_stale = interval, on_stale
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id``."""
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, {"time": time.time(), **self._me})
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it meanwhile (this one looked dead): nothing left to beat for

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None:  # not yet beating (or started by a worker without heartbeats): judged by its start
                last = trial.datetime_start.timestamp() if trial.datetime_start else now
                if now - last > 2 * self._interval:
                    stale.append(trial._trial_id)
            elif now - beat["time"] > 2 * self._interval or _gone(beat):
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What to do with a trial failed as stale (re-queue it)."""
        return self._on_stale
