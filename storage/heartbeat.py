"""Heartbeats as a trial attribute, so that a dead worker's trial is failed and retried on any storage.

Optuna's JournalStorage and its gRPC storage proxy have no heartbeat. ``AttributeHeartbeat``,
mixed into ``HeartbeatJournalStorage`` here and into the proxy's client (``proxy``), implements
Optuna's ``BaseHeartbeat`` on any storage, so that Optuna's own machinery (the heartbeat thread of
``study.optimize``, ``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``) works on them
unchanged. A heartbeat is a trial system attribute: the time, the trial, and who runs
it (host, pid, the process's start time); a process's first beat for a trial also names it in the
trial's user attribute ``worker``. A running trial is stale when its heartbeat is older than two
intervals, or when its worker ran on this host and that process is gone (the OOM killer, SIGKILL).

A database keeps Optuna's own heartbeat table, which workers connected to it read; workers behind
a proxy read the attribute. ``HeartbeatRDBStorage`` writes both, whichever side the beat comes
from, so that the two kinds of worker may share a study.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from enstune.errors import EnstuneError
from enstune.storage.bulk import native, set_trial_attrs
from enstune.storage import optuna_private as op
from enstune.storage.optuna_private import (BaseHeartbeat, BaseHeartbeatThread, NullHeartbeatThread, is_heartbeat_enabled,
                                            rdb_models)
from enstune.storage.resilient import ResilientRDBStorage, dialect_upsert, one_try

HEARTBEAT_ATTR = "heartbeat"
WORKER_ATTR = "worker"  # user attribute: host:pid of the process that runs the trial, written with its first beat
# The most seconds a heartbeat thread waits before trying a lost storage again: a beat lands within
# this of the storage's return (and never later than an interval), well before any judge's grace.
RETRY_CAP = 5.0
# A trial's writes once this process found it failed by another one (see ``Beats``).
_WRITES = ("set_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
           "set_trial_system_attr", "set_trial_attrs")
log = logging.getLogger("enstune.storage")


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


def _own(beat: Any, trial_id: int) -> bool:  # noqa: ANN401 - a stored attribute
    """Whether heartbeat attribute ``beat`` was written for ``trial_id`` (a retry copies its predecessor's)."""
    return isinstance(beat, dict) and beat.get("trial", trial_id) == trial_id


def _stale_now(trial: FrozenTrial) -> bool:
    """Whether ``trial``'s own last beat names a process of this host that is gone: stale at once, whatever its age."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    return _own(beat, op.trial_id(trial)) and _gone(beat)


def _owner() -> dict[str, Any]:
    """Who beats: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _beat(storage: optuna.storages.BaseStorage, trial_id: int, owner: dict[str, Any], named: set[int]) -> bool:
    """Record on ``storage`` that ``owner`` still runs ``trial_id``; the first beat also names the worker.

    False, and nothing written, when the trial has ended (another worker failed it as stale).
    """
    # The worker's name is a user attribute, so that users see who runs a trial (the dashboard
    # shows those); it rides with the first beat rather than costing a write of its own.
    user = {} if trial_id in named else {WORKER_ATTR: f"{owner['host']}:{owner['pid']}"}
    try:
        set_trial_attrs(storage, trial_id, user=user, system={HEARTBEAT_ATTR: {"time": time.time(), "trial": trial_id,
                                                                                 **owner}})
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker failed it meanwhile (this one looked dead): nothing left to beat for
    named.add(trial_id)
    return True


def check_interval(interval: Any) -> None:  # noqa: ANN401 - whatever a caller passed
    """Refuse a heartbeat interval that is not a positive number of seconds, as Optuna's RDBStorage does."""
    # Zero or less would make every running trial stale at once (every live worker's trial failed).
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise ValueError("The value of `heartbeat_interval` should be a positive integer.")


class AttributeHeartbeat(BaseHeartbeat):
    """Optuna's ``BaseHeartbeat`` on a storage's trial attributes; mixed in before the storage class.

    A study's check reads its running trials; until one of them could have gone silent for two
    intervals the next checks read nothing, and only ask whether the processes on this host that
    ran them still live. So a silent trial is failed by the first check after two intervals, as
    Optuna's check before each trial would, at a read per interval rather than per trial; a dead
    worker's trial started since the last read is found at the next one.
    """

    def _start_heartbeats(self, interval: int, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        check_interval(interval)
        self._interval, self._on_stale, self._me = interval, on_stale, _owner()
        # per study: its running trials without a beat of their own, and when first seen so
        self._unbeaten: dict[int, dict[int, float]] = {}
        self._quiet: dict[int, float] = {}  # per study: until when (time.time()) no running trial can turn stale
        self._owners: dict[int, dict[int, dict[str, Any]]] = {}  # per study: the last read's running trials' beats
        self._named: set[int] = set()  # trials this process has beaten for (and named itself in)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id``."""
        self.beat_once(trial_id)

    def beat_once(self, trial_id: int) -> bool:
        """One heartbeat of ``trial_id`` now; False when the trial has ended (another worker failed it)."""
        return _beat(self, trial_id, self._me, self._named)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        if now < self._quiet.get(study_id, now):
            owners = self._owners.get(study_id, {})
            if not (gone := [owner for owner, beat in owners.items() if _gone(beat)]):
                return []
            self._quiet[study_id] = now  # failed (or finished meanwhile): the next check reads again
            return gone
        grace = 2 * self._interval
        stale, unbeaten, quiet = [], {}, now + grace  # a trial that starts running after now: not before then
        owners = self._owners[study_id] = {}
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            # A retry copies its failed predecessor's attributes, heartbeat included: not its own.
            if beat is not None and beat.get("trial", op.trial_id(trial)) == op.trial_id(trial):
                last, gone = beat["time"], _gone(beat)
                owners[op.trial_id(trial)] = beat
            else:
                # Not yet beating (or started by a worker without heartbeats): judged by its start. A
                # start without a time zone is a server's local time (through a proxy), which this
                # host's zone may not share: then from when this process first saw the trial so.
                start, gone = trial.datetime_start, False
                if start is not None and start.tzinfo is not None:
                    last = start.timestamp()
                else:
                    last = unbeaten[op.trial_id(trial)] = self._unbeaten.get(study_id, {}).get(op.trial_id(trial), now)
            if now - last > grace or gone:
                stale.append(op.trial_id(trial))
            quiet = min(quiet, last + grace)
        self._unbeaten[study_id] = unbeaten  # a study's check leaves another's (the member claims') alone
        # With a stale trial found, the next check reads again: whoever fails it, or a late beat, changes what it sees.
        self._quiet[study_id] = quiet if not stale else now
        return stale

    def is_stale(self, study_id: int, trial: FrozenTrial) -> bool:
        """Whether running ``trial`` of the study is stale, judged as the study's trials are, its own beat read afresh."""
        return _stale_now(trial) or op.trial_id(trial) in self._get_stale_trial_ids(study_id)

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
        # Nothing but JournalStorage's own and the heartbeat's state: ``enable_heartbeat`` makes one of these
        # from an opened JournalStorage's state and ``_start_heartbeats`` alone.
        check_interval(interval)
        JournalStorage.__init__(self, backend)
        self._start_heartbeats(interval, on_stale)


class HeartbeatRDBStorage(ResilientRDBStorage):
    """A database storage whose heartbeats go both to Optuna's heartbeat table and to the attribute, in one transaction.

    Its own workers beat into both; a beat arriving as the attribute (from a worker behind a proxy
    that serves this storage) also reaches the table. Stale trials are found in the table, as Optuna
    does; a study's check is then skipped while none of its running trials can have gone silent for
    the grace period, so that a trial silent since its last beat is failed by the same check as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._me = _owner()
        self._quiet: dict[int, float] = {}  # per study: until when (time.monotonic()) no running trial can turn stale
        self._owners: dict[int, dict[int, dict[str, Any]]] = {}  # per study: the last read's running trials' beats
        self._named: set[int] = set()  # trials this process has beaten for (and named itself in)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id`` (table and attribute)."""
        _beat(self, trial_id, self._me, self._named)

    def beat_once(self, trial_id: int) -> bool:
        """One heartbeat of ``trial_id``, a lost database raised at once; False when the trial has ended."""
        with one_try():
            return _beat(self, trial_id, self._me, self._named)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Optuna's; a heartbeat attribute is also recorded in the heartbeat table."""
        if key == HEARTBEAT_ATTR:
            self.set_trial_attrs(trial_id, system={key: value})
        else:
            super().set_trial_system_attr(trial_id, key, value)

    def _write_attrs(self, session: Any, trial_id: int, user: dict[str, Any], system: dict[str, Any]) -> None:
        super()._write_attrs(session, trial_id, user, system)
        if HEARTBEAT_ATTR in system:
            _beat_row(session, trial_id, self.engine.name)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        start = time.monotonic()
        if start < self._quiet.get(study_id, start):
            # No beat can have aged past the grace period yet; a worker of this host may have died since.
            if not (gone := [trial_id for trial_id, beat in self._owners.get(study_id, {}).items() if _gone(beat)]):
                return []
            self._quiet[study_id] = start  # failed (or finished meanwhile): the next check reads again
            return gone
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        beats = self.heartbeats(study_id)
        owners = self._owners[study_id] = {trial_id: owner for trial_id, (_, owner) in beats.items()
                                           if _own(owner, trial_id)}
        stale = [trial_id for trial_id, (age, _) in beats.items()
                 if age > grace or (trial_id in owners and _gone(owners[trial_id]))]
        # A trial that beats after this read turns stale a whole grace period later at the earliest.
        oldest = max((age for age, _ in beats.values()), default=0.0)
        self._quiet[study_id] = start + grace - oldest if not stale else start
        return stale

    def is_stale(self, study_id: int, trial: FrozenTrial) -> bool:
        """Whether running ``trial`` of the study is stale, judged as the study's trials are, its own beat read afresh."""
        return _stale_now(trial) or op.trial_id(trial) in self._get_stale_trial_ids(study_id)


@functools.cache
def _beat_upsert(dialect: str) -> Any:  # noqa: ANN401 - a SQLAlchemy Insert
    """The upsert of a trial's row in Optuna's heartbeat table, at the database's time, built once."""
    import sqlalchemy

    models = rdb_models()
    table = models.TrialHeartbeatModel.__table__
    insert = dialect_upsert(dialect)(table).values(trial_id=sqlalchemy.bindparam("trial_id"),
                                                   heartbeat=sqlalchemy.func.now())
    return insert.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": sqlalchemy.func.now()})


def _beat_row(session: Any, trial_id: int, dialect: str) -> None:
    """Record a heartbeat of ``trial_id`` in Optuna's heartbeat table, at the database's time, within ``session``."""
    import sqlalchemy

    models = rdb_models()
    if dialect_upsert(dialect) is not None:
        session.execute(_beat_upsert(dialect), {"trial_id": trial_id})
        return
    model = models.TrialHeartbeatModel
    row = model.where_trial_id(trial_id, session, for_update=True)  # Optuna's statements, elsewhere
    if row is None:
        session.add(model(trial_id=trial_id))
    else:
        row.heartbeat = session.execute(sqlalchemy.func.now()).scalar()


class TakenOver(EnstuneError):
    """This worker's trial was failed by another worker, which judged it silent: it is retried there, and left here."""

    def __init__(self, trial_id: int) -> None:
        super().__init__(f"trial id {trial_id} was failed by another worker (its heartbeats had not reached the "
                         f"storage for two intervals) and is retried there")
        self.trial_id = trial_id


def fence(storage: BaseStorage, trial_id: int) -> None:
    """From now on this process writes nothing more of ``trial_id`` (another worker failed it): each write raises."""
    served = native(storage)
    served.__dict__.setdefault("_ended_elsewhere", set()).add(trial_id)


def fenced(trial_id: int, storage: BaseStorage) -> bool:
    """Whether ``trial_id`` was found failed by another worker (``fence``)."""
    return trial_id in native(storage).__dict__.get("_ended_elsewhere", ())


def _fenced_write(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, trial_id: int, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - whatever it returns
        if trial_id in self.__dict__.get("_ended_elsewhere", ()):
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial id {trial_id} was failed by another worker; this one writes nothing more of it")
        return method(self, trial_id, *args, **kwargs)

    return call


def fence_writes(cls: type) -> type:
    """``cls`` with every write of a trial refused once ``fence`` named it: a trial retried elsewhere is never
    written over by the worker that lost it (its results, an error, its end)."""
    for name in _WRITES:
        if hasattr(cls, name):
            setattr(cls, name, _fenced_write(getattr(cls, name)))
    return cls


fence_writes(HeartbeatJournalStorage)
fence_writes(HeartbeatRDBStorage)

_LIVE: dict[int, Beats] = {}  # trial id -> the heartbeat thread of this process that beats for it


class Beats(BaseHeartbeatThread):
    """enstune's heartbeat thread of one trial (or claim): Optuna's, but a lost storage never silences it for long.

    Optuna's thread calls the storage's ``record_heartbeat``, which waits out a lost database with
    back-off up to 30 s (and dies with it after 10 minutes), so a trial's beats may lag behind a
    restart by more than the interval. Here each beat is one try; a failed one is tried again after
    0.5 s, doubling up to ``RETRY_CAP`` seconds (never more than the interval), so the first beat
    lands within seconds of the storage's return; any failure is logged once per outage and never
    ends the thread. A beat that finds the trial ended (another worker failed it as stale) sets
    ``ended``, fences the trial's writes (``fence``) and stops: ``check`` then raises ``TakenOver``.
    """

    def __init__(self, trial_id: int, storage: BaseStorage) -> None:
        self.trial_id, self.storage = trial_id, storage
        interval = storage.get_heartbeat_interval()
        assert interval is not None
        self.interval = float(interval)
        self.ended = threading.Event()  # another worker failed the trial
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Beat now, then every interval, in a thread of its own."""
        self._stop.clear()
        _LIVE[self.trial_id] = self
        self._thread = threading.Thread(target=self._run, name=f"enstune-heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Stop beating (at once, even while the storage is away)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _LIVE.pop(self.trial_id, None)

    def check(self) -> None:
        """Raise ``TakenOver`` once the trial was found failed by another worker."""
        if self.ended.is_set():
            raise TakenOver(self.trial_id)

    def _beat(self) -> bool:
        served = native(self.storage)
        if hasattr(served, "beat_once"):
            return served.beat_once(self.trial_id)
        self.storage.record_heartbeat(self.trial_id)
        return True

    def _run(self) -> None:
        delay, lost_since = 0.5, None
        cap = min(RETRY_CAP, self.interval)
        while not self._stop.is_set():
            try:
                alive = self._beat()
            except KeyError:  # the trial is gone with its study: the worker's next call says so
                return
            except Exception as exc:  # noqa: BLE001 - a lost storage, or anything else: beat again soon
                if lost_since is None:
                    lost_since = time.monotonic()
                    reason = str(exc).splitlines()[0] if str(exc) else ""
                    log.warning("heartbeat of trial id %d not recorded (%s: %s); trying again every %.1f s at most",
                                self.trial_id, type(exc).__name__, reason[:200], cap)
                self._stop.wait(delay)
                delay = min(2 * delay, cap)
                continue
            if lost_since is not None:
                log.warning("heartbeats of trial id %d recorded again after %.0f s", self.trial_id,
                            time.monotonic() - lost_since)
            delay, lost_since = 0.5, None
            if not alive:
                fence(self.storage, self.trial_id)
                self.ended.set()
                return
            self._stop.wait(self.interval)


def beats_for(trial_id: int, storage: BaseStorage) -> BaseHeartbeatThread:
    """The heartbeat thread of ``trial_id`` on ``storage`` (none where it records no heartbeats)."""
    return Beats(trial_id, storage) if is_heartbeat_enabled(storage) else NullHeartbeatThread()


def beating(trial_id: int) -> Beats | None:
    """The heartbeat thread of this process that beats for ``trial_id`` now, if any."""
    return _LIVE.get(trial_id)
