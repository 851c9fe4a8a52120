"""The embedded journal, kept appendable after an interrupted write (a full disk, a killed worker).

Such a write leaves a last line without its newline. Optuna's reader skips it, but its next
append would be glued to it, and the glued line makes the whole journal unreadable. So the
journal's own lock, each time it is taken, moves such a tail aside into a backup file.
"""

from __future__ import annotations

import itertools
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

_BLOCK = 1 << 16


class TornTailLock(JournalFileSymlinkLock):
    """Optuna's journal lock (the one its writers take) that, once held, sets aside a torn last line."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)

    def acquire(self) -> bool:
        """Take the lock, then move an unfinished last line aside before anything is appended."""
        super().acquire()
        try:
            set_aside_torn_tail(self.path)
        except BaseException:
            self.release()
            raise
        return True


def journal_backend(path: Path) -> JournalFileBackend:
    """Optuna's file backend for ``path`` under a ``TornTailLock``, a torn last line set aside before any read."""
    lock = TornTailLock(path)
    backend = JournalFileBackend(str(path), lock_obj=lock)
    if _ends_torn(path):
        try:
            lock.acquire()
            lock.release()
        except OSError:  # cannot lock or write it: a reader can still skip the torn line, as Optuna does
            pass
    return backend


def set_aside_torn_tail(path: Path) -> Path | None:
    """Move the bytes after ``path``'s last newline into a backup beside it; return the backup, if any.

    Only safe while holding the journal's lock: unlocked, the tail may be a write in progress.
    """
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        keep = _complete_length(f, size)
        if keep == size:
            return None
        f.seek(keep)
        tail = f.read()
        if not _is_torn_log(tail):  # not what an interrupted append leaves: not ours to touch
            return None
        backup = _write_backup(path, tail)  # durable before anything is cut from the journal
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    print(f"enstune: {path} ended in an unfinished line ({len(tail)} bytes, an interrupted write); "
          f"moved it to {backup.name}", file=sys.stderr)
    return backup


def _is_torn_log(tail: bytes) -> bool:
    """Whether ``tail`` is the start of a log line (a JSON object), or the zeros a crash may leave instead."""
    return tail.startswith(b"{") or not tail.strip(b"\0")


def _ends_torn(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            return _complete_length(f, size) != size
    except OSError:
        return False


def _complete_length(f, size: int) -> int:  # noqa: ANN001 - a binary file
    """The length of the file's complete lines: up to and including its last newline."""
    end, block = size, 1  # the last byte first: every append but a torn one ends in a newline
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end, block = start, _BLOCK
    return 0


def _write_backup(path: Path, tail: bytes) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        backup = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            with open(backup, "xb") as f:
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            return backup
        except FileExistsError:  # another repair in the same second
            continue
    raise AssertionError("unreachable")
