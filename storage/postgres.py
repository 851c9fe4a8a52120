"""A throwaway local PostgreSQL cluster for development, tests and CI: ``enstune storage up|down|url``.

The cluster lives in ``postgres/`` under the runs directory, listens on 127.0.0.1 only, on a
free port, with trust authentication and no password (so its URL is safe to print). PostgreSQL
refuses to run as root; as root, the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enstune.errors import EnstuneError

DATABASE = "enstune"
SUPERUSER = "postgres"
ENV_BIN = "ENSTUNE_PG_BIN"


def _bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (``ENSTUNE_PG_BIN`` first)."""
    candidates = [os.environ.get(ENV_BIN, "")]
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in candidates:
        if c and all((Path(c) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    raise EnstuneError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL "
                       f"(e.g. apt-get install postgresql) or set {ENV_BIN}")


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a server tool, as the ``postgres`` user when we are root."""
    tool = Path(cmd[0]).name
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", SUPERUSER, "--", *cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
        raise EnstuneError(f"{tool} failed: {lines[-1]}")
    return proc


class LocalCluster:
    """The development cluster under ``root`` (``<runs>/postgres``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.port_file = self.root / "port"
        self.lock_file = self.root / "lock"

    def url(self) -> str:
        """The running cluster's storage URL."""
        if not self.running():
            raise EnstuneError(f"no local PostgreSQL is running in {self.root}; start one with `enstune storage up`")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port_file.read_text().strip()}/{DATABASE}"

    def running(self) -> bool:
        """Whether the cluster's server is up."""
        if not (self.data / "PG_VERSION").is_file():
            return False
        return _run(str(_bindir() / "pg_ctl"), "status", "-D", str(self.data), check=False).returncode == 0

    def up(self) -> str:
        """Create the cluster if needed, start it if stopped (idempotent, one caller at a time); return its URL."""
        with self._locked():
            if self.running():
                return self.url()
            bindir = _bindir()
            if not (self.data / "PG_VERSION").is_file():
                self._init(bindir)
            port = self._port()
            self.port_file.write_text(f"{port}\n")
            _run(str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l",
                 str(self.root / "server.log"), "-o", f"-p {port} -h 127.0.0.1 -k ''")
            self._create_database(port)
            return self.url()

    def down(self, purge: bool = False) -> str:
        """Stop the server (fast shutdown); with ``purge`` also delete its data. Say what was done."""
        if not self.root.exists():
            return "no local PostgreSQL was running"
        with self._locked():
            was_running = self.running()
            if was_running:
                _run(str(_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))
            if purge:
                shutil.rmtree(self.root)
        return ("local PostgreSQL stopped" if was_running else "no local PostgreSQL was running") + \
            ("; its data deleted" if purge else "")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cluster's lock: two `storage up` at once would both run initdb and pg_ctl start."""
        while True:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.lock_file, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    held = os.fstat(f.fileno()).st_ino == os.stat(self.lock_file).st_ino
                except FileNotFoundError:
                    held = False
                if held:  # else `down --purge` deleted the file while we waited: lock the new one
                    yield
                    return

    def _init(self, bindir: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
            if _run("test", "-w", str(self.root), check=False).returncode != 0:
                raise EnstuneError(f"user {SUPERUSER} cannot write {self.root}: as root, put the runs directory "
                                   f"(ENSTUNE_HOME) where that user can reach it")
        _run(str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
             "--no-instructions")

    def _port(self) -> int:
        """The port used before when it is still free, else a fresh free one."""
        if self.port_file.is_file():
            port = int(self.port_file.read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _create_database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")


def cluster(home: Path) -> LocalCluster:
    """The development cluster of runs directory ``home``."""
    if Path(home).exists() and not Path(home).is_dir():
        raise EnstuneError(f"{home} is not a directory: set ENSTUNE_HOME to a writable directory")
    return LocalCluster(Path(home) / "postgres")
