"""Claims on members: of the workers that need one member at once, one trains it and the others wait.

A claim is a trial of a companion Optuna study (one per enstune study, created on first use and
marked by the study system attribute ``claims_of``), so claims work on every storage enstune opens
through Optuna's storage API and heartbeats alone. To claim member key K a worker creates a RUNNING
trial with system attributes member=K and owner=host:pid, records a heartbeat for it, marks it
``beating``, then reads the RUNNING claims on K: the lowest-numbered one is the holder. Trial
numbers follow creation (the journal's log order; a database numbers a study's trials under a lock
on its row), so every claimer agrees on the holder. The holder looks in the cache once more (an
earlier holder may have finished since), trains while a thread records its claim's heartbeats,
puts the member in the cache, then completes the claim (with the seconds it held it) or, when
training raises, fails it. The others fail their own claims and wait on the holder's: COMPLETE,
the member is in the cache; FAIL, or stale by the storage's heartbeat, claim again. A stale claim
is failed here directly: the storage's stale-trial callback would re-queue it. So a COMPLETE claim
is one training, and every other claim ends FAIL.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from enstune.errors import Deferred, EnstuneError
from enstune.storage.heartbeat import beats_for
from enstune.storage import optuna_private as op
from enstune.storage.optuna_private import BaseHeartbeat, is_heartbeat_enabled

OWNER_ATTR = "claims_of"  # study system attribute of a companion: the study whose members it claims
MEMBER, OWNER, BEATING = "member", "owner", "beating"  # claim system attributes
SUFFIX = ".member-claims"
NAME_LIMIT = 512  # characters of a study name in Optuna's database schema
POLL = 0.5  # seconds between looks at the holder's claim


class Held(Deferred):
    """Another live worker holds the claim on member ``key``: it is being trained there now."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"member {key} is being trained by {holder}")
        self.key, self.holder = key, holder


def companion_name(study_name: str) -> str:
    """The name of the study that holds the member claims of study ``study_name``."""
    name = study_name + SUFFIX
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(study_name.encode()).hexdigest()[:16]
    return f"{study_name[:NAME_LIMIT - len(SUFFIX) - len(digest) - 1]}~{digest}{SUFFIX}"


def claims_owner(system_attrs: dict[str, Any]) -> str | None:
    """The study whose claims a study with ``system_attrs`` holds; None for a study of its own."""
    return system_attrs.get(OWNER_ATTR)


def companions(storage: BaseStorage) -> set[str]:
    """The names of the companion studies in ``storage``, marked or about to be (created, not yet marked)."""
    studies = storage.get_all_studies()
    named = {companion_name(s.study_name) for s in studies}
    return {s.study_name for s in studies
            if claims_owner(s.system_attrs) is not None or (s.study_name in named and not s.user_attrs)}


def claims_for(storage: BaseStorage, study_name: str) -> Claims | None:
    """Claims on study ``study_name``'s members; None where ``storage`` records no heartbeats (none could expire)."""
    return Claims(storage, study_name) if is_heartbeat_enabled(storage) else None


class Lease:
    """A claim's outcome: held (train ``with`` it), or ``found``, the member another worker trained."""

    def __init__(self, claims: Claims, trial_id: int | None, found: Any = None) -> None:
        self.claims, self.trial_id, self.found = claims, trial_id, found
        self._beats: Any = None
        self._start = time.monotonic()

    def __enter__(self) -> Lease:
        assert self.trial_id is not None, "a member found in the cache is not trained"
        self._beats = beats_for(self.trial_id, self.claims.storage)
        self._beats.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._beats.join()
        assert self.trial_id is not None
        if exc_type is None:  # the member is in the cache: waiters read it from there
            self.claims._end(self.trial_id, TrialState.COMPLETE, time.monotonic() - self._start)
        else:  # waiters take over at once
            self.claims._end(self.trial_id, TrialState.FAIL)


class Claims:
    """Claims on the members of study ``study_name``, in ``storage`` (which must record heartbeats)."""

    def __init__(self, storage: BaseStorage, study_name: str, poll: float = POLL) -> None:
        if not is_heartbeat_enabled(storage):
            raise ValueError("member claims need a storage that records heartbeats")
        assert isinstance(storage, BaseHeartbeat)
        self.storage, self.heartbeat = storage, storage
        self.study_name, self.poll = study_name, poll
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._study_id: int | None = None
        self._lock = threading.Lock()
        self._unmarked: dict[int, float] = {}  # claims seen without the beating mark: since when

    def study_id(self) -> int:
        """The companion study's id, created (and marked with its owner) on first use."""
        with self._lock:
            if self._study_id is None:
                name = companion_name(self.study_name)
                try:
                    study_id = self.storage.create_new_study([StudyDirection.MINIMIZE], name)
                except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
                    study_id = self.storage.get_study_id_from_name(name)
                owner = claims_owner(self.storage.get_study_system_attrs(study_id))
                if owner is None and (self.storage.get_study_user_attrs(study_id)
                                      or self.storage.get_n_trials(study_id)):
                    raise EnstuneError(f"study {name!r} is a study of its own: the member claims of study "
                                       f"{self.study_name!r} need its name (rename one of them)")
                if owner is None:  # created just now, here or by another worker
                    self.storage.set_study_system_attr(study_id, OWNER_ATTR, self.study_name)
                elif owner != self.study_name:
                    raise EnstuneError(f"study {name!r} holds the member claims of study {owner!r}, "
                                       f"not of {self.study_name!r}")
                self._study_id = study_id
            return self._study_id

    def acquire(self, key: str, lookup: Callable[[str], Any], wait: bool = True) -> Lease:
        """Hold the claim on member ``key``, or find the member ``lookup(key)`` once its holder completes.

        Without ``wait``, a claim another live worker holds raises ``Held`` at once. A stop check in
        force (``enstune.training.stop_when``: the trial it is for was failed elsewhere) raises before
        any claim is opened, so no member is claimed for a trial that is no longer this worker's.
        """
        from enstune.training import check_stop

        while True:
            check_stop()
            mine = self._open(key)
            holder = self._holder(key)
            if holder is not None and op.trial_id(holder) == mine:
                if (found := lookup(key)) is None:
                    return Lease(self, mine)
                # The last holder completed between this worker's look at the cache and its claim.
                self._end(mine, TrialState.FAIL)
                return Lease(self, None, found)
            self._end(mine, TrialState.FAIL)
            if holder is None:  # this worker's own claim was failed before it looked (taken for stale)
                time.sleep(self.poll)
                continue
            holder = self._settled(holder, key, wait)
            # COMPLETE, yet not in the cache: lost since (a damaged entry), and claimed again like a failed one.
            if holder.state == TrialState.COMPLETE and (found := lookup(key)) is not None:
                return Lease(self, None, found)

    def _settled(self, holder: FrozenTrial, key: str, wait: bool) -> FrozenTrial:
        """Claim ``holder`` once it has ended: COMPLETE, FAIL, or failed here as stale."""
        from enstune.training import check_stop

        while holder.state == TrialState.RUNNING:
            if self._stale(holder):
                self._end(op.trial_id(holder), TrialState.FAIL)
                return self.storage.get_trial(op.trial_id(holder))  # it may have completed first
            if not wait:
                raise Held(key, holder.system_attrs.get(OWNER, "another worker"))
            check_stop()
            time.sleep(self.poll)
            holder = self.storage.get_trial(op.trial_id(holder))
        return holder

    def _open(self, key: str) -> int:
        """A new RUNNING claim on ``key`` with a heartbeat recorded, marked as beating."""
        template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={MEMBER: key, OWNER: self.me})
        trial_id = self.storage.create_new_trial(self.study_id(), template)
        self.heartbeat.record_heartbeat(trial_id)
        # A database judges staleness by recorded heartbeats alone: a claim whose worker died before its
        # first one (or one more created by a call retried after a lost connection) would never turn
        # stale there, so waiters also judge a claim by how long they have seen it without this mark.
        self.storage.set_trial_system_attr(trial_id, BEATING, True)
        return trial_id

    def _holder(self, key: str) -> FrozenTrial | None:
        """The claim that trains ``key``: its first RUNNING claim (only those: the read stays small)."""
        running = self.storage.get_all_trials(self.study_id(), deepcopy=False, states=(TrialState.RUNNING,))
        return min((t for t in running if t.system_attrs.get(MEMBER) == key),
                   key=lambda t: (t.number, op.trial_id(t)), default=None)

    def _stale(self, claim: FrozenTrial) -> bool:
        """Whether the worker holding ``claim`` went silent or died (the storage's heartbeat judges)."""
        if not claim.system_attrs.get(BEATING):
            # Timed from when this process first saw it so, not from its start: another host's clock.
            seen = self._unmarked.setdefault(op.trial_id(claim), time.monotonic())
            if time.monotonic() - seen > 2 * (self.heartbeat.get_heartbeat_interval() or 0):
                return True
        return self.heartbeat.is_stale(self.study_id(), claim)

    def _end(self, trial_id: int, state: TrialState, seconds: float | None = None) -> None:
        """Finish claim ``trial_id`` as ``state``; one another worker finished first stays as it is."""
        try:
            self.storage.set_trial_state_values(trial_id, state, None if seconds is None else [seconds])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
