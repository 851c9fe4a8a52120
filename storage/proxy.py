"""The storage proxy (``enstune storage proxy``): one process holds the database connections for every worker.

Workers open ``grpc://HOST:PORT`` and hold no database connection. The proxy serves what
``enstune.storage.served_storage`` opens (a database rides out a restart there, under Optuna's
cache, so that each worker's read of a study's trials costs the database only the trials changed
since the last one). A worker's client rides out a restart of the proxy itself: its calls wait
for the proxy, and one cut short by the proxy's end is sent again, for up to ``PATIENCE`` seconds.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial

from enstune.errors import EnstuneError
from enstune.storage.heartbeat import AttributeHeartbeat

THREADS = 16  # requests served at once, each with a database connection of its own
PATIENCE = 600.0  # seconds a worker's call waits for a proxy that is gone (a database's, likewise)
# Every call waits for the proxy to be there, and one that fails because it went away (UNAVAILABLE)
# is tried again; a proxy back up is found within seconds.
_CHANNEL = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.enable_retries", 1),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", json.dumps({"methodConfig": [{
        "name": [{"service": "optuna.StorageService"}], "waitForReady": True, "timeout": f"{PATIENCE:.0f}s",
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "30s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]}}]})),
]


def proxy_url(host: str, port: int) -> str:
    """The ``grpc://`` storage URL workers open to reach a proxy on ``host``:``port``."""
    return f"grpc://[{host}]:{port}" if ":" in host else f"grpc://{host}:{port}"


def _lost(name: str) -> Any:  # noqa: ANN401 - a grpc.UnaryUnaryClientInterceptor
    """An interceptor that turns a proxy gone for good into one line naming it."""
    import grpc

    class Lost(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
            outcome = continuation(details, request)
            code = outcome.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise EnstuneError(f"lost the storage proxy at {name} ({code.name} after waiting up to "
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
        from optuna.storages._grpc.auto_generated.api_pb2_grpc import StorageServiceStub
        from optuna.storages._grpc.client import GrpcClientCache

        channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=_CHANNEL)
        self._channel = grpc.intercept_channel(channel, _lost(self._name))
        self._stub = StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)


class HeartbeatProxyStorage(AttributeHeartbeat, ProxyStorage):
    """A storage proxy client whose running trials record heartbeats every ``interval`` seconds."""

    def __init__(self, host: str, port: int, name: str, interval: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        ProxyStorage.__init__(self, host, port, name)
        self._start_heartbeats(interval, on_stale)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that this process still runs ``trial_id``; a lost proxy is the trial's to report."""
        try:
            super().record_heartbeat(trial_id)
        except EnstuneError:
            pass  # the worker's next call meets the same error and stops with it; this thread ends quietly


def serve(storage: optuna.storages.BaseStorage, host: str, port: int) -> None:
    """Serve ``storage`` through Optuna's gRPC storage proxy on ``host``:``port`` until the process ends."""
    import signal

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the command announces itself in one line
    # Ctrl-C and SIGTERM stop it, even when started with SIGINT ignored (in the background of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.run_grpc_proxy_server(storage, host=f"[{host}]" if ":" in host else host, port=port,
                                              thread_pool=ThreadPoolExecutor(max_workers=THREADS))
