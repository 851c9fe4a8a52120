"""One way to open a study storage: ``--storage`` / ``ENSTUNE_STORAGE`` / the embedded default."""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from enstune.errors import EnstuneError
from enstune.storage.retry import MAX_RETRY  # noqa: F401  (re-exported: the worker and tests read it here)

ENV_STORAGE = "ENSTUNE_STORAGE"
ENV_HOME = "ENSTUNE_HOME"
ENV_ARTIFACTS = "ENSTUNE_ARTIFACTS"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
# A worker holds one connection most of the time (plus one for its heartbeat thread), so a
# small pool per worker keeps hundreds of workers under PostgreSQL's connection limit. No ping
# before each use (a round trip per transaction): a connection lost since (a restarted database)
# fails its first statement, the storage tries it again (``resilient``), and the pool, told of a
# lost connection, replaces every connection it held.
POOL = {"pool_size": 2, "max_overflow": 2, "pool_recycle": 300}
CONNECT_TIMEOUT = 10  # seconds before an unreachable PostgreSQL host or storage proxy is an error
PROXY_PORT = 13000  # Optuna's default for its gRPC storage proxy
SCHEMA_ATTEMPTS = 8


PATIENCE = 600.0  # seconds a worker waits for a storage that is down when it starts, as each later call does


class StorageDown(EnstuneError):
    """The storage does not answer now (stopped, restarting, unreachable): it may come back."""


def open_storage_patiently(url: str | None = None, patience: float = PATIENCE):  # noqa: ANN201 - optuna BaseStorage
    """``open_storage``, waiting up to ``patience`` seconds for a storage that is down (said once), as later calls do."""
    import logging

    deadline, delay, told = time.monotonic() + patience, 0.5, False
    while True:
        try:
            storage = open_storage(url)
        except StorageDown as exc:
            if time.monotonic() + delay > deadline:
                raise
            if not told:
                logging.getLogger("enstune.storage").warning("%s; waiting up to %.0f min for it", exc, patience / 60)
                told = True
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
            continue
        if told:
            logging.getLogger("enstune.storage").warning("storage %s answers again", mask_url(url))
        return storage


def _down(exc: BaseException) -> bool:
    """Whether a failure to open a database says it is down (refused, shutting down, starting), not refusing us."""
    import psycopg

    from enstune.storage.resilient import caused_by

    # SQLSTATE class 08 (connection exception) and 57 (operator intervention: shutdown, starting up);
    # none at all where no server answered. A wrong password (28) or database (3D) is no outage.
    return caused_by(exc, lambda e: isinstance(e, psycopg.OperationalError)
                     and (e.sqlstate is None or e.sqlstate[:2] in ("08", "57")))


def home_dir() -> Path:
    """The runs directory (``ENSTUNE_HOME``, default ``./runs``)."""
    return Path(os.environ.get(ENV_HOME) or "runs").resolve()  # an empty ENSTUNE_HOME is unset, not "."


def resolve_url(url: str | None) -> str | None:
    """The storage URL in force: the argument, else ``ENSTUNE_STORAGE``, else None (embedded)."""
    return url or os.environ.get(ENV_STORAGE) or None


_HIDDEN = "***"
_QUERY_SECRETS = ("password", "passwd")  # the keys drivers read a password from
# Only for what SQLAlchemy cannot parse (no "//") or may misread (a raw "@" in the password, which
# it ends at the first "@"): the password runs from the user's ":" to the last "@".
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:/*[^:/?]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)([^&]*)", re.IGNORECASE)
# The password as written in a URL SQLAlchemy parses: its own pattern, user info up to the first "@".
_WRITTEN_PASSWORD = re.compile(r"^[\w+]+://[^:/]*:([^@]*)@")


def _sqlalchemy_url(url: str):  # noqa: ANN202 - sqlalchemy.engine.URL
    """SQLAlchemy's reading of ``url``, or None where it cannot read it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def _misreads_at(parsed) -> bool:  # noqa: ANN001 - sqlalchemy.engine.URL
    """Whether SQLAlchemy ended the password at a raw "@" in it, the rest going to the host or database."""
    return parsed.password is not None and "@" in f"{parsed.host or ''}{parsed.database or ''}"


def _parse(url: str):  # noqa: ANN202 - sqlalchemy.engine.URL
    """SQLAlchemy's reading of ``url``; None where it cannot read it or may misread a raw "@" in the password."""
    parsed = _sqlalchemy_url(url)
    if parsed is None or parsed.password is None:
        return parsed
    # SQLAlchemy ends the password at its first "@"; with another "@" after it, that may be the real end.
    written = _WRITTEN_PASSWORD.match(url)
    return None if written is None or "@" in url[written.end():] else parsed


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***``; the embedded default is named as such."""
    if url is None:
        return f"embedded ({home_dir() / 'studies.journal'})"
    parsed = _parse(url)
    if parsed is None:
        return _QUERY_PASSWORD.sub(rf"\1{_HIDDEN}", _USERINFO_PASSWORD.sub(rf"\1{_HIDDEN}@", url))
    hidden = {key: _HIDDEN for key in parsed.query if key.lower() in _QUERY_SECRETS}
    if parsed.password is None and not hidden:
        return url  # nothing to hide: as written, not as SQLAlchemy would re-encode it
    rendered = parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    return rendered.replace(quote(_HIDDEN, safe=""), _HIDDEN)


def mask_url_text(text: str, url: str) -> str:
    """``text`` with ``url``'s passwords removed wherever they appear (the URL in it included)."""
    secrets = _password_forms(url)
    masked = mask_url(url)
    if not secrets:
        return text.replace(url, masked)
    secret = re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True))))
    # The URL itself, as given or already masked, is replaced whole: a password that is also part
    # of its host or database then leaves those readable.
    whole = re.compile("|".join(map(re.escape, sorted({url, masked}, key=len, reverse=True))))
    pieces = whole.split(text)
    return masked.join(secret.sub(_HIDDEN, piece) for piece in pieces)


def _password_forms(url: str) -> set[str]:
    """Every form ``url``'s passwords may take in a message: as written, decoded, and re-encoded."""
    from sqlalchemy.engine import URL

    parsed = _parse(url)
    if parsed is None:
        written = [m.group(2) for m in (_USERINFO_PASSWORD.search(url), *_QUERY_PASSWORD.finditer(url)) if m]
        decoded: list[str] = []
    else:
        written = [m.group(1) for m in (_WRITTEN_PASSWORD.match(url),) if m and parsed.password is not None]
        written += [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
        decoded = [parsed.password] if parsed.password is not None else []
        for key, value in parsed.query.items():
            if key.lower() in _QUERY_SECRETS:
                decoded += [value] if isinstance(value, str) else list(value)
    decoded += [f(w) for w in written for f in (unquote, unquote_plus)]
    forms = set(written)
    for d in decoded:
        sqlalchemy_form = URL.create("x", username="", password=d).render_as_string(hide_password=False)
        forms |= {d, quote(d, safe=""), quote(d), quote_plus(d), sqlalchemy_form[len("x://:"):-1]}
    return {f for f in forms if f}


def open_storage(url: str | None = None, heartbeat: int | None = None, *,  # noqa: ANN201 - optuna BaseStorage
                 connections: int | None = None):
    """An Optuna storage for ``url`` (see ``resolve_url``); unreachable storage is a one-line error.

    With ``heartbeat`` seconds, the storage (a database, the embedded journal or a storage proxy)
    records a heartbeat per running trial, and a trial silent for two intervals (or whose worker
    on this host is gone) is failed and re-queued with the same parameters. ``connections`` sizes
    a database's connection pool (default: a worker's, ``POOL``).
    """
    if heartbeat is not None and heartbeat < 1:
        raise EnstuneError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    storage = _open(resolve_url(url), connections)
    return enable_heartbeat(storage, heartbeat) if heartbeat else storage


def _open(url: str | None, connections: int | None):  # noqa: ANN202 - optuna BaseStorage
    """``open_storage`` without heartbeats: the embedded journal (``url`` None), a database or a storage proxy."""
    import optuna

    from enstune.storage.heartbeat import HeartbeatRDBStorage
    from enstune.storage.journal import journal_backend

    if url is None:
        path = home_dir() / "studies.journal"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(journal_backend(path))
        except OSError as exc:
            raise EnstuneError(f"cannot keep studies in {path} (set {ENV_HOME} to a writable directory): "
                               f"{exc.strerror or exc}") from None
        except ValueError as exc:  # undecodable bytes or JSON: the file is left exactly as it is
            raise EnstuneError(f"{path} is not an Optuna journal ({type(exc).__name__}); move it aside or set "
                               f"{ENV_HOME} elsewhere") from None
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "grpc":
        return _open_proxy(url)
    if scheme not in _RDB_SCHEMES:
        raise EnstuneError(f"unsupported storage URL {mask_url(url)}; use sqlite:///…, postgresql+psycopg://…, "
                           f"grpc://HOST:PORT")
    parsed = _sqlalchemy_url(url)
    # The driver would take part of the user info for the host (or send part of it to a host).
    if url.partition("://")[2].split("/", 1)[0].count("@") > 1 or (parsed is not None and _misreads_at(parsed)):
        raise EnstuneError(f"storage URL {mask_url(url)}: percent-encode an '@' in the user or password as %40")
    if scheme == "sqlite" and (url.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in url):
        raise EnstuneError("an in-memory SQLite storage is gone when the command ends; give a file: sqlite:///path.db")
    engine_kwargs = {} if scheme == "sqlite" else dict(POOL)
    if connections is not None and scheme != "sqlite":
        engine_kwargs.update(pool_size=connections, max_overflow=0)
    if scheme == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return HeartbeatRDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure to connect is the same user error
            # Workers opening a fresh database at once race to create Optuna's tables; the
            # losers see a duplicate key and find the tables there when they try again.
            if _is_schema_race(exc) and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            error = StorageDown if scheme == "postgresql" and _down(exc) else EnstuneError
            raise error(f"cannot open storage {mask_url(url)}: {mask_url_text(reason, url)}") from None
    raise AssertionError("unreachable")


def enable_heartbeat(storage, interval: int):  # noqa: ANN001, ANN201 - optuna BaseStorage
    """``storage`` from ``open_storage(url)``, beating every ``interval`` s as ``open_storage(url, interval)``.

    Use what this returns from then on; nothing is read or connected again. A database gets the
    heartbeat settings its constructor takes, and is returned. The embedded journal and a proxy's
    client come back as their heartbeat class over ``storage``'s own state (its journal as read,
    its channel), which ``storage`` shares.
    """
    from optuna.storages import JournalStorage

    from enstune.storage.heartbeat import HeartbeatJournalStorage, HeartbeatRDBStorage, check_interval
    from enstune.storage.optuna_private import set_heartbeat
    from enstune.storage.proxy import HeartbeatProxyStorage, ProxyStorage
    from enstune.storage.retry import Requeue

    if interval < 1:
        raise EnstuneError(f"--heartbeat must be at least 1 second, got {interval}")
    check_interval(interval)
    if isinstance(storage, HeartbeatRDBStorage):
        set_heartbeat(storage, interval, 2 * interval, Requeue())
        return storage
    beating = {JournalStorage: HeartbeatJournalStorage, ProxyStorage: HeartbeatProxyStorage}.get(type(storage))
    if beating is None:
        raise TypeError(f"no heartbeats on a {type(storage).__name__} (open it with open_storage)")
    # Their __init__ is the plain class's and then _start_heartbeats: the first half is done in ``storage``.
    # (Python refuses to change ``storage``'s own class: the heartbeat mixin's bases lay it out apart.)
    turned = beating.__new__(beating)
    turned.__dict__.update(vars(storage))
    turned._start_heartbeats(interval, Requeue())
    return turned


def proxy_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``grpc://HOST[:PORT]`` storage URL; anything else in it is a one-line error."""
    malformed = EnstuneError(f"storage URL {mask_url(url)}: a storage proxy is grpc://HOST:PORT")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a bad port, or a bracketed host that is no IPv6 address
        raise malformed from None
    # Written back as gRPC targets write it, the address must give the URL's own: no empty or 0 port
    # silently taken for the default, no stray bracket or user info.
    written = (f"[{host}]" if ":" in host else host) + ("" if port is None else f":{port}")
    if parts.scheme != "grpc" or not host or parts.netloc.lower() != written.lower() or port == 0 \
            or parts.path.strip("/") or parts.query or parts.fragment:
        raise malformed
    return host, port or PROXY_PORT


def _open_proxy(url: str):  # noqa: ANN202 - optuna GrpcStorageProxy
    """A client of the storage proxy at ``url`` (``enstune storage proxy``), checked to answer."""
    import optuna

    from enstune.storage.proxy import ProxyStorage

    host, port = proxy_address(url)
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as gRPC targets write it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's proxy client
        storage = ProxyStorage(host, port, mask_url(url))
    try:
        storage.wait_server_ready(timeout=CONNECT_TIMEOUT)
    except ConnectionError:
        storage.close()
        raise StorageDown(f"cannot reach the storage proxy at {mask_url(url)} within {CONNECT_TIMEOUT} s "
                           f"(is `enstune storage proxy` running there?)") from None
    import grpc

    try:  # a study id none has: a storage proxy says it is not found; another gRPC server knows no such call
        storage.get_study_name_from_id(-1)
    except KeyError:
        pass
    except grpc.RpcError as exc:
        storage.close()
        raise EnstuneError(f"the server at {mask_url(url)} is not an Optuna storage proxy "
                           f"({exc.code().name}: {exc.details()})") from None
    return storage


def served_storage(url: str | None):  # noqa: ANN201 - optuna BaseStorage
    """The storage a proxy serves for ``url`` (see ``resolve_url``): a database, with the proxy's pool, cached."""
    import optuna

    from enstune.storage.proxy import THREADS

    url = resolve_url(url)
    if url is not None and url.split(":", 1)[0] == "grpc":
        raise EnstuneError(f"--storage {mask_url(url)} is itself a storage proxy; give the storage it should serve")
    return optuna.storages.get_storage(open_storage(url, connections=THREADS))


def _is_schema_race(exc: BaseException) -> bool:
    """A duplicate key or an existing table: another process created Optuna's schema at the same time."""
    import sqlalchemy.exc as sa

    from enstune.storage.resilient import caused_by

    return caused_by(exc, lambda e: isinstance(e, sa.IntegrityError)
                     or (isinstance(e, sa.ProgrammingError) and "already exists" in str(e)))


def open_artifacts(location: str | None = None):  # noqa: ANN201 - optuna.artifacts ArtifactStore
    """An Optuna artifact store: ``location`` / ``ENSTUNE_ARTIFACTS`` (a directory or ``s3://bucket``).

    The default is ``artifacts/`` in the runs directory; workers on several machines share
    member checkpoints only when they point at the same shared directory or bucket.
    """
    from optuna.artifacts import Backoff, Boto3ArtifactStore, FileSystemArtifactStore

    location = location or os.environ.get(ENV_ARTIFACTS) or str(home_dir() / "artifacts")
    if location.startswith("s3://"):
        bucket = location[len("s3://"):].strip("/")
        if not bucket or "/" in bucket:
            raise EnstuneError(f"artifact store {location!r}: use s3://BUCKET (no key prefix)")
        try:
            return Backoff(Boto3ArtifactStore(bucket))
        except ImportError:
            raise EnstuneError("s3:// artifact stores need boto3: pip install boto3") from None
    path = Path(location).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnstuneError(f"cannot use artifact directory {path}: {exc.strerror}") from None
    return FileSystemArtifactStore(path)
