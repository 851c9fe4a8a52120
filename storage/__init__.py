"""One way to open a study storage: ``--storage`` / ``ENSTUNE_STORAGE`` / the embedded default."""

from __future__ import annotations

import os
import re
from pathlib import Path

from enstune.errors import EnstuneError

ENV_STORAGE = "ENSTUNE_STORAGE"
ENV_HOME = "ENSTUNE_HOME"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


def home_dir() -> Path:
    """The runs directory (``ENSTUNE_HOME``, default ``./runs``)."""
    return Path(os.environ.get(ENV_HOME, "runs")).resolve()


def resolve_url(url: str | None) -> str | None:
    """The storage URL in force: the argument, else ``ENSTUNE_STORAGE``, else None (embedded)."""
    return url or os.environ.get(ENV_STORAGE) or None


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***``; the embedded default is named as such."""
    if url is None:
        return f"embedded ({home_dir() / 'studies.journal'})"
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None = None):  # noqa: ANN201 - optuna.storages.BaseStorage
    """An Optuna storage for ``url`` (see ``resolve_url``); unreachable storage is a one-line error."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = resolve_url(url)
    if url is None:
        path = home_dir() / "studies.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in _RDB_SCHEMES:
        raise EnstuneError(f"unsupported storage URL {mask_url(url)}; use sqlite:///…, postgresql+psycopg://…")
    engine_kwargs = {} if scheme == "sqlite" else {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2,
                                                  "pool_recycle": 300}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure to connect is the same user error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EnstuneError(f"cannot open storage {mask_url(url)}: {mask_url_text(reason, url)}") from None


def mask_url_text(text: str, url: str) -> str:
    """``text`` with ``url``'s password removed wherever it appears."""
    m = re.search(r"://[^:/@]*:([^@]*)@", url)
    return text.replace(m.group(1), "***") if m and m.group(1) else text
