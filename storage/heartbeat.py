"""Heartbeats as a trial attribute, so that a dead worker's trial is failed and retried on any storage.

Optuna's JournalStorage and its gRPC storage proxy have no heartbeat. ``AttributeHeartbeat``,
mixed into ``HeartbeatJournalStorage`` here and into the proxy's client (``proxy``), implements
Optuna's ``BaseHeartbeat`` on any storage, so that Optuna's own machinery (the heartbeat thread of
``study.optimize``, ``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``) works on them
unchanged. A heartbeat is a trial system attribute: the time, the trial, and who runs
it (host, pid, the process's start time). A running trial is stale when its heartbeat is older than
two intervals, or at once when its worker ran on this host and that process is gone (the OOM
killer, SIGKILL).

A database keeps Optuna's own heartbeat table, which workers connected to it read; workers behind
a proxy read the attribute. ``HeartbeatRDBStorage`` writes both, whichever side the beat comes
from, so that the two kinds of worker may share a study.
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

from enstune.storage.resilient import ResilientRDBStorage

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


def _owner() -> dict[str, Any]:
    """Who beats: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _beat(storage: optuna.storages.BaseStorage, trial_id: int, owner: dict[str, Any]) -> None:
    """Record on ``storage`` that ``owner`` still runs ``trial_id``."""
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, {"time": time.time(), "trial": trial_id, **owner})
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker failed it meanwhile (this one looked dead): nothing left to beat for


class AttributeHeartbeat(BaseHeartbeat):
    """Optuna's ``BaseHeartbeat`` on a storage's trial attributes; mixed in before the storage class."""

    def _start_heartbeats(self, interval: int, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        self._interval, self._on_stale, self._me = interval, on_stale, _owner()
        # per study: its running trials without a beat of their own, and when first seen so
        self._unbeaten: dict[int, dict[int, float]] = {}

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id``."""
        _beat(self, trial_id, self._me)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale, unbeaten = time.time(), [], {}
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            # A retry copies its failed predecessor's attributes, heartbeat included: not its own.
            if beat is not None and beat.get("trial", trial._trial_id) == trial._trial_id:
                if now - beat["time"] > 2 * self._interval or _gone(beat):
                    stale.append(trial._trial_id)
                continue
            # Not yet beating (or started by a worker without heartbeats): judged by its start. A
            # start without a time zone is a server's local time (through a proxy), which this
            # host's zone may not share: then from when this process first saw the trial so.
            start = trial.datetime_start
            if start is not None and start.tzinfo is not None:
                last = start.timestamp()
            else:
                last = unbeaten[trial._trial_id] = self._unbeaten.get(study_id, {}).get(trial._trial_id, now)
            if now - last > 2 * self._interval:
                stale.append(trial._trial_id)
        self._unbeaten[study_id] = unbeaten  # a study's check leaves another's (the member claims') alone
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What to do with a trial failed as stale (re-queue it)."""
        return self._on_stale


class HeartbeatJournalStorage(AttributeHeartbeat, JournalStorage):
    """A JournalStorage whose running trials record heartbeats every ``interval`` seconds."""

    def __init__(self, backend: Any, interval: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        JournalStorage.__init__(self, backend)
        self._start_heartbeats(interval, on_stale)


class HeartbeatRDBStorage(ResilientRDBStorage):
    """A database storage whose heartbeats go both to Optuna's heartbeat table and to the attribute.

    Its own workers beat into both; a beat arriving as the attribute (from a worker behind a proxy
    that serves this storage) also reaches the table. Stale trials are found in the table, as Optuna does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._me = _owner()

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id`` (table and attribute)."""
        _beat(self, trial_id, self._me)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Optuna's; a heartbeat attribute is also recorded in the heartbeat table."""
        super().set_trial_system_attr(trial_id, key, value)
        if key == HEARTBEAT_ATTR:
            super().record_heartbeat(trial_id)
