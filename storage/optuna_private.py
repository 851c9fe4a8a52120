"""Every name enstune takes from Optuna that is not its public API, in one place.

Optuna is pinned; an upgrade that moves or changes one of these breaks here, and
``tests/test_optuna_private.py`` says which. Everywhere else the code uses Optuna's public API
and these functions. What each is for:

- a study's storage and id, a trial's id and the trial as Optuna read it when it was asked for
  (``Study._storage``, ``Study._study_id``, ``Trial._trial_id``/``FrozenTrial._trial_id``,
  ``Trial._cached_frozen_trial``): the storage calls Optuna makes for a study, made by enstune too;
- the heartbeat machinery (``optuna.storages._heartbeat``), which enstune's journal and proxy
  storages implement;
- the RDB storage's ORM models and session scope (``optuna.storages._rdb``), for reads and writes
  in one transaction;
- the RDB storage's heartbeat settings, which its constructor keeps as attributes, set on a storage
  already opened (a worker learns its study's interval only from the storage);
- the cache in front of an RDB storage (``optuna.storages._cached_storage``);
- the journal's lock file and operation codes (``optuna.storages.journal``);
- the gRPC proxy's client stub, client cache and server factory (``optuna.storages._grpc``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage as CachedStorage  # noqa: F401
from optuna.storages._heartbeat import (  # noqa: F401
    BaseHeartbeat, BaseHeartbeatThread, NullHeartbeatThread, is_heartbeat_enabled)
from optuna.storages.journal._file import get_lock_file  # noqa: F401
from optuna.storages.journal._storage import JournalOperation  # noqa: F401
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes through (Optuna's cache in front of a database)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of ``trial`` (a running trial or a frozen one)."""
    return trial._trial_id


def uncached(storage: BaseStorage) -> BaseStorage:
    """The storage that serves the calls: the database under Optuna's cache (``_CachedStorage._backend``), or itself."""
    return storage._backend if isinstance(storage, CachedStorage) else storage


def as_asked(trial: optuna.Trial) -> FrozenTrial:
    """``trial`` as Optuna holds it in the worker: read when it was asked for, updated by this worker's writes."""
    return trial._cached_frozen_trial


def rdb_models() -> Any:
    """The RDB storage's ORM models (``optuna.storages._rdb.models``)."""
    from optuna.storages._rdb import models

    return models


def scoped_session(session_maker: Any, ignore_integrity_error: bool = False) -> Any:
    """Optuna's context for one RDB transaction: commit, or roll back and raise Optuna's errors."""
    from optuna.storages._rdb.storage import _create_scoped_session

    return _create_scoped_session(session_maker, ignore_integrity_error)


def set_heartbeat(rdb: RDBStorage, interval: int, grace_period: int | None,
                  on_stale: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
    """Heartbeats on opened ``rdb``, kept as its constructor keeps its heartbeat arguments (it derives nothing more)."""
    rdb.heartbeat_interval = interval
    rdb.grace_period = grace_period
    # The deprecated name is the same callback, as the constructor sets it.
    rdb.heartbeat_stale_trial_callback = rdb.failed_trial_callback = on_stale


def grpc_client() -> tuple[Any, Any]:
    """(the gRPC storage service's client stub class, Optuna's client cache) for the storage proxy's client."""
    from optuna.storages._grpc.auto_generated.api_pb2_grpc import StorageServiceStub
    from optuna.storages._grpc.client import GrpcClientCache

    return StorageServiceStub, GrpcClientCache


def grpc_server_factory() -> Any:
    """Optuna's factory of a gRPC storage server (``make_server``), which the storage proxy serves."""
    from optuna.storages._grpc.server import make_server

    return make_server


def optimize_logger() -> str:
    """The name of the logger of Optuna's optimize loop (which writes a failed trial's lines)."""
    from optuna.study import _optimize

    return _optimize.__name__


def heartbeat_threads(factory: Any) -> Any:  # noqa: ANN401 - a context manager
    """Within: ``study.optimize`` starts each trial's heartbeat thread as ``factory(trial_id, storage)``.

    Optuna's loop looks up ``optuna.study._optimize.get_heartbeat_thread`` for every trial; it is
    put back on the way out.
    """
    import contextlib

    from optuna.study import _optimize

    @contextlib.contextmanager
    def within() -> Any:  # noqa: ANN401 - a generator
        before = _optimize.get_heartbeat_thread
        _optimize.get_heartbeat_thread = factory
        try:
            yield
        finally:
            _optimize.get_heartbeat_thread = before

    return within()
