"""The storage proxy (``enstune storage proxy``): one process holds the database connections for every worker.

Workers open ``grpc://HOST:PORT`` and hold no database connection. The proxy serves what
``enstune.storage.served_storage`` opens (a database rides out a restart there, under Optuna's
cache, so that each worker's read of a study's trials costs the database only the trials changed
since the last one). A worker's client rides out a restart of the proxy itself: its calls wait
for the proxy, and one cut short by the proxy's end is sent again, for up to ``PATIENCE`` seconds.

Beside Optuna's service the proxy serves ``enstune.Storage``: a trial's attributes set in one
request (one transaction on a database; Optuna's service sets one per request), and a study's
census (its trials by state and its best value) without shipping its running trials to count
them. A client facing a plain Optuna proxy falls back to Optuna's requests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from enstune.errors import EnstuneError
from enstune.storage import bulk
from enstune.storage.heartbeat import AttributeHeartbeat, check_interval, fence_writes
from enstune.storage.retry import StorageUnavailable

THREADS = 16  # requests served at once, each with a database connection of its own
PATIENCE = 600.0  # seconds a worker's call waits for a proxy that is gone (a database's, likewise)
NOTICE = 10.0  # seconds a call waits before the worker logs that it is waiting
SERVICE = "enstune.Storage"  # enstune's requests, beside Optuna's ``optuna.StorageService``
CALLS = ("SetTrialAttrs", "Census")
log = logging.getLogger("enstune.storage")
# Every call waits for the proxy to be there, and one that fails because it went away (UNAVAILABLE)
# is tried again; a proxy back up is found within seconds.
_CHANNEL = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.enable_retries", 1),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", json.dumps({"methodConfig": [{
        "name": [{"service": "optuna.StorageService"}, {"service": SERVICE}], "waitForReady": True,
        "timeout": f"{PATIENCE:.0f}s",
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "30s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]}}]})),
]


def proxy_url(host: str, port: int) -> str:
    """The ``grpc://`` storage URL workers open to reach a proxy on ``host``:``port``."""
    return f"grpc://[{host}]:{port}" if ":" in host else f"grpc://{host}:{port}"


class _Stalls:
    """Says, once per stall, that calls to the proxy at ``name`` wait: a thread of its own looks every second."""

    def __init__(self, name: str) -> None:
        self.name, self._since, self._told = name, {}, False
        self._lock, self._tokens = threading.Lock(), itertools.count()
        threading.Thread(target=self._watch, name="enstune-proxy-stalls", daemon=True).start()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Within: one call to the proxy, timed."""
        token = next(self._tokens)
        with self._lock:
            self._since[token] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._since[token]
                self._told = self._told and bool(self._since)

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                oldest = min(self._since.values(), default=None)
                tell = oldest is not None and time.monotonic() - oldest > NOTICE and not self._told
                self._told = self._told or tell
            if tell:
                log.warning("the storage proxy at %s is not answering; waiting up to %.0f min for it to come back",
                            self.name, PATIENCE / 60)


def _lost(name: str) -> Any:  # noqa: ANN401 - a grpc.UnaryUnaryClientInterceptor
    """An interceptor that turns a proxy gone for good into one line naming it."""
    import grpc

    stalls = _Stalls(name)

    class Lost(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
            with stalls.waiting():
                outcome = continuation(details, request)
                code = outcome.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise StorageUnavailable(f"lost the storage proxy at {name} ({code.name} after waiting up to "
                                   f"{PATIENCE:.0f} s): {outcome.details()}")
            return outcome

    return Lost()


class ProxyStorage(GrpcStorageProxy):
    """Optuna's gRPC storage proxy client, patient with a restarting proxy; ``name`` is its URL for messages."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self._name = name
        self._directions: dict[int, list[optuna.study.StudyDirection]] = {}
        GrpcStorageProxy.__init__(self, host=host, port=port)

    def get_study_directions(self, study_id: int) -> list[optuna.study.StudyDirection]:
        """Optuna's, asked once per study (a study's directions never change; ``best_value`` reads them per trial)."""
        if study_id not in self._directions:
            self._directions[study_id] = GrpcStorageProxy.get_study_directions(self, study_id)
        return list(self._directions[study_id])

    def _setup(self) -> None:
        import grpc
        from enstune.storage.optuna_private import grpc_client

        StorageServiceStub, GrpcClientCache = grpc_client()  # noqa: N806 - classes

        channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=_CHANNEL)
        self._channel = grpc.intercept_channel(channel, _lost(self._name))
        self._stub = StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)
        self._calls = {name: self._channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=_encode,
                                                       response_deserializer=json.loads) for name in CALLS}
        self._served = True  # whether the proxy serves enstune's requests (not a plain Optuna proxy)

    def __getstate__(self) -> dict[Any, Any]:
        state = GrpcStorageProxy.__getstate__(self)
        del state["_calls"]
        return state

    def _ask(self, call: str, **request: Any) -> Any:  # noqa: ANN401 - a JSON reply
        """The reply to enstune's request ``call``; None from a proxy that serves Optuna's requests alone."""
        import grpc

        if not self._served:
            return None
        try:
            return self._calls[call](request)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self._served = False
                return None
            if code == grpc.StatusCode.NOT_FOUND:
                raise KeyError(exc.details()) from exc
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise UpdateFinishedTrialError(exc.details()) from exc
            raise

    def set_trial_attrs(self, trial_id: int, user: dict[str, Any] | None = None, system: dict[str, Any] | None = None,
                        census_of: tuple[int, bool] | None = None) -> bulk.Tally | None:
        """A trial's user and system attributes in one request (one transaction behind a database).

        With ``census_of`` = (study id, maximize), the study's census comes back in the same reply
        (None from a plain Optuna proxy, or one serving a journal: there it would take a read of its own).
        """
        reply = self._ask("SetTrialAttrs", trial_id=trial_id, user=user or {}, system=system or {},
                          census_of=census_of)
        if reply is not None:  # a census only where the storage behind the proxy took it in the same transaction
            return None if "census" not in reply else _tally(reply["census"])
        bulk.one_by_one(self, trial_id, user, system)
        return None

    def census(self, study_id: int, below: int | None = None, maximize: bool = True) -> bulk.Tally:
        """A study's trials by state (those numbered below ``below``, if given) and its best value, in one request."""
        reply = self._ask("Census", study_id=study_id, below=below, maximize=maximize)
        if reply is None:
            return bulk.tally(self.get_all_trials(study_id, deepcopy=False), below, maximize)
        return _tally(reply)


@fence_writes
class HeartbeatProxyStorage(AttributeHeartbeat, ProxyStorage):
    """A storage proxy client whose running trials record heartbeats every ``interval`` seconds."""

    def __init__(self, host: str, port: int, name: str, interval: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        check_interval(interval)  # before a channel is opened
        ProxyStorage.__init__(self, host, port, name)
        self._start_heartbeats(interval, on_stale)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id``; a lost proxy is the trial's to report."""
        try:
            super().record_heartbeat(trial_id)
        except EnstuneError:
            pass  # the worker's next call meets the same error and stops with it; this thread ends quietly


def _encode(message: Any) -> bytes:  # noqa: ANN401 - JSON
    return json.dumps(message).encode()


def _census_message(tally: bulk.Tally) -> dict[str, Any]:
    states, best = tally
    return {"states": {state.name: n for state, n in states.items()}, "best": best}


def _tally(message: dict[str, Any]) -> bulk.Tally:
    return {TrialState[state]: n for state, n in message["states"].items()}, message["best"]


def _service(storage: optuna.storages.BaseStorage) -> Any:  # noqa: ANN401 - a grpc.GenericRpcHandler
    """enstune's requests on ``storage``, answered as Optuna's service answers its own (errors included)."""
    import grpc

    def set_trial_attrs(trial_id: int, user: dict[str, Any], system: dict[str, Any],
                        census_of: list[Any] | None = None) -> dict[str, Any]:
        tally = bulk.set_trial_attrs(storage, trial_id, user, system, None if census_of is None else tuple(census_of))
        return {} if tally is None else {"census": _census_message(tally)}

    def census(study_id: int, below: int | None, maximize: bool) -> dict[str, Any]:
        return _census_message(bulk.census(storage, study_id, below, maximize))

    def handler(call: Callable[..., dict[str, Any]]) -> Any:  # noqa: ANN401 - a grpc.RpcMethodHandler
        def handle(request: dict[str, Any], context: Any) -> dict[str, Any]:
            try:
                return call(**request)
            except KeyError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except UpdateFinishedTrialError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=json.loads,
                                                   response_serializer=_encode)

    return grpc.method_handlers_generic_handler(SERVICE, {"SetTrialAttrs": handler(set_trial_attrs),
                                                          "Census": handler(census)})


def server(storage: optuna.storages.BaseStorage, host: str, port: int) -> Any:  # noqa: ANN401 - a grpc.Server
    """Optuna's gRPC storage proxy server for ``storage`` on ``host``:``port``, with enstune's service; not started."""
    from enstune.storage.optuna_private import grpc_server_factory

    make_server = grpc_server_factory()

    # What run_grpc_proxy_server starts, with enstune's service added before it starts.
    built = make_server(storage, f"[{host}]" if ":" in host else host, port, ThreadPoolExecutor(max_workers=THREADS))
    built.add_generic_rpc_handlers((_service(storage),))
    return built


def serve(storage: optuna.storages.BaseStorage, host: str, port: int) -> None:
    """Serve ``storage`` through the storage proxy on ``host``:``port`` until the process ends."""
    import signal

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the command announces itself in one line
    # Ctrl-C and SIGTERM stop it, even when started with SIGINT ignored (in the background of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    running = server(storage, host, port)
    running.start()
    running.wait_for_termination()
