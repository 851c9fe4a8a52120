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
def home(tmp_path, monkeypatch, request):
    """A fresh ENSTUNE_HOME holding the demo's pre-trained checkpoints, and no ENSTUNE_STORAGE from the environment.

    A test marked ``bare_home`` gets no runs directory made for it: it tests pre-training on first use, or what
    is at that path.
    """
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("ENSTUNE_STORAGE", raising=False)
    if request.node.get_closest_marker("bare_home") is None:
        with_pretrained(tmp_path / "runs", request.getfixturevalue("pretrained"))
    return tmp_path / "runs"


def with_pretrained(runs: Path, pretrained: Path) -> Path:
    """``runs`` with a copy of the demo's pre-trained checkpoints (a copy: a test may damage its files)."""
    shutil.copytree(pretrained, runs / "pretrained")
    return runs



@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """The demo's pre-trained checkpoints folder (the three that the demo templates start from), made once per test
    session, in a process of its own: pre-training them in every runs directory took a tenth of the suite's time."""
    from filelock import FileLock  # torch's own dependency

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, which holds every xdist worker's
    home = root / "pretrained-demo"
    with FileLock(f"{home}.lock"):
        if not home.is_dir():
            making = Path(tempfile.mkdtemp(prefix="pretrained-", dir=root))
            code = ("from pathlib import Path; from enstune.checks import load_checked; "
                    "from enstune.members import Workspace; "
                    f"ws = Workspace(load_checked('starsse-demo').task, Path({str(making)!r})); "
                    "[ws.checkpoints.path(i) for i in range(3)]")
            subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ENSTUNE_HOME": str(making)})
            making.rename(home)
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
    config.addinivalue_line("markers", "bare_home: no runs directory is made for the test (none of the demo's "
                                       "pre-trained checkpoints in it)")
    if getattr(config.option, "maxschedchunk", False) is None:
        # With -n, hand tests to the workers one at a time: the slow ones, collected first, then start on every
        # worker at once instead of all queueing on the first (xdist otherwise sends consecutive chunks).
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items):
    """The slow tests first (otherwise in collection order): parallel workers (``-n``) then overlap their waits with
    the rest of the suite instead of finishing on them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
