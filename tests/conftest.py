"""Shared fixtures: every test gets its own runs directory; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh ENSTUNE_HOME and no ENSTUNE_STORAGE from the environment."""
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("ENSTUNE_STORAGE", raising=False)
    return tmp_path / "runs"



def reachable_tmpdir(prefix: str) -> Path:
    """A fresh directory that the ``postgres`` user can enter too (the server runs as it under root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL for the session (``enstune storage up`` in a throwaway runs directory)."""
    from enstune.storage.postgres import cluster

    root = reachable_tmpdir("enstune-pg-")
    c = cluster(root)
    c.up()
    yield c
    c.down(purge=True)
    shutil.rmtree(root, ignore_errors=True)
