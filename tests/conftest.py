"""Shared fixtures: every test gets its own runs directory; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers (-n) share the cores: torch's intra-op threads in each (and in the workers they start)
    # would only contend. Set before torch is imported; the suite also passes single-threaded on its own.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh ENSTUNE_HOME and no ENSTUNE_STORAGE from the environment."""
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("ENSTUNE_STORAGE", raising=False)
    return tmp_path / "runs"



@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """The demo's pre-trained checkpoints folder, made once (in a process of its own): copy it into a runs directory."""
    home = tmp_path_factory.mktemp("pretrained")
    code = ("from pathlib import Path; from enstune.checks import load_checked; from enstune.members import Workspace; "
            f"Workspace(load_checked('starsse-demo').task, Path({str(home)!r})).checkpoints.path(0)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ENSTUNE_HOME": str(home)})
    return home / "pretrained"


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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a quarter minute or more of wall time, most of it waiting on workers, "
                                       "servers or timeouts")
    if getattr(config.option, "maxschedchunk", False) is None:
        # With -n, hand tests to the workers one at a time: the slow ones, collected first, then start on every
        # worker at once instead of all queueing on the first (xdist otherwise sends consecutive chunks).
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items):
    """The slow tests first (otherwise in collection order): parallel workers (``-n``) then overlap their waits with
    the rest of the suite instead of finishing on them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
