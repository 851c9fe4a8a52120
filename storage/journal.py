"""The embedded journal, kept readable and appendable after damage: torn writes, stray lines, a full disk.

An interrupted write (a killed worker, a full disk) leaves a last line without its newline. Optuna's
reader skips it, but its next append would be glued to it, and the glued line makes the whole
journal unreadable; a whole line that is not a log record (a stray write, a line an editor mangled)
does so at once. So:

- the reader (``Journal``) takes such a whole line for a record that changes nothing, so that every
  process counts log records alike, and remembers where it was found;
- the journal's own lock, each time it is taken, moves an unfinished last line aside into a backup
  file, and overwrites the whole lines found to be no records, in place and at the same length, with
  records that change nothing (their bytes go to one backup file, with one notice): byte offsets
  and record numbers, which other processes keep, stay valid, and plain Optuna reads it again;
- an append that fails (a full disk) is cut back off the file at once, so it leaves nothing torn,
  and is tried again while space may return; then it is one line naming the file system;
- SIGINT and SIGTERM wait while an append holds the lock (``enstune.storage.signals``).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Generator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from enstune.storage.retry import StorageUnavailable
from enstune.storage.optuna_private import JournalOperation, get_lock_file
from enstune.storage.signals import held

_BLOCK = 1 << 16
_OPS = frozenset(int(op) for op in JournalOperation)
# A record Optuna's replay counts and skips: what a line that is no record stands for.
_NOTHING = int(JournalOperation.DISCARD_TRIALS)
PATIENCE = 600.0  # seconds an append waits for space on a full disk, as a call waits for a lost database
log = logging.getLogger("enstune.storage")


class TornTailLock(JournalFileSymlinkLock):
    """Optuna's journal lock (the one its writers take) that, once held, repairs what readers found damaged."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.stray: dict[int, bytes] = {}  # offset -> whole line that is no record, as the reader found it

    def acquire(self) -> bool:
        """Take the lock, then set aside an unfinished last line and stray lines before anything is appended."""
        super().acquire()
        try:
            set_aside_torn_tail(self.path)
            if self.stray:
                set_aside_stray_lines(self.path, self.stray)
        except BaseException:
            self.release()
            raise
        return True


class Journal(JournalFileBackend):
    """Optuna's file backend that reads past lines that are no records and never leaves a failed append behind."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._torn_lock = TornTailLock(self._path)
        super().__init__(str(path), lock_obj=self._torn_lock)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Optuna's read, with a whole line that is no record read as one that changes nothing."""
        with open(self._file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            number, offset = 0, 0
            if log_number_from in self._log_number_offset:
                number, offset = log_number_from, self._log_number_offset[log_number_from]
            if offset > size:  # the records this process has read are gone: replaying would be a lie
                raise StorageUnavailable(f"the journal {self._file_path} shrank under this process (from at least "
                                   f"{offset} to {size} bytes): it was truncated or replaced; the worker stops")
            f.seek(offset)
            records = 0
            for line in f:
                if offset + len(line) > size or not line.endswith(b"\n"):
                    break  # written after the read began, or an unfinished last line (the lock's holder sets it aside)
                self._log_number_offset.setdefault(number + 1, offset + len(line))
                record = _record(line)
                if record is None:
                    self._torn_lock.stray.setdefault(offset, line)
                    record = {"op_code": _NOTHING}
                else:
                    records += 1
                if number >= log_number_from:
                    yield record
                number, offset = number + 1, offset + len(line)
            if log_number_from == 0 and records == 0 and self._torn_lock.stray:
                self._torn_lock.stray.clear()
                raise ValueError("no line of it is a journal record")  # not a journal: left exactly as it is

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append; one that fails is cut off the file again, and waits while the disk is full."""
        data = ("\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n").encode()
        deadline, delay, told = time.monotonic() + PATIENCE, 0.5, False
        while True:
            try:
                self._append(data)
                if told:
                    log.warning("the journal %s takes writes again", self._file_path)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or time.monotonic() + delay > deadline:
                    raise StorageUnavailable(f"cannot write the journal {self._file_path}: {_why(exc, self._path)}") \
                        from None
                if not told:
                    log.warning("cannot write the journal %s: %s; waiting up to %.0f min for space", self._file_path,
                                _why(exc, self._path), PATIENCE / 60)
                    told = True
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    def _append(self, data: bytes) -> None:
        # A signal raised inside Optuna's lock would release another writer's lock or fail on its own
        # removed lock file: it waits until the line is written and the lock given back.
        with held(), get_lock_file(self._lock), open(self._file_path, "ab") as f:
            start = f.seek(0, os.SEEK_END)
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                # Cut back what part of the line reached the file (cutting needs no space): no torn
                # tail is left for a backup, whatever the number of attempts.
                try:
                    f.truncate(start)
                except OSError:
                    pass
                raise


def _why(exc: OSError, path: Path) -> str:
    """What went wrong, naming the file system that holds ``path`` and its free space where known."""
    reason = exc.strerror or str(exc)
    try:
        stats = os.statvfs(path.parent)
        free = stats.f_bavail * stats.f_frsize
    except OSError:
        return reason
    return f"{reason} ({free // (1 << 20)} MiB free on the file system of {_mount_point(path.parent)})"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _record(line: bytes) -> dict[str, Any] | None:
    """The log record on ``line``, or None where it is none (not JSON, or no operation Optuna knows)."""
    try:
        record = json.loads(line)
    except ValueError:  # undecodable bytes too
        return None
    if not isinstance(record, dict) or record.get("op_code") not in _OPS or isinstance(record.get("op_code"), bool):
        return None
    return record


def journal_backend(path: Path) -> Journal:
    """The journal at ``path``, a torn last line set aside before any read; a file that is no journal is an error."""
    if not _is_journal(path):
        raise ValueError(f"{path} holds no journal record")
    backend = Journal(path)
    if _ends_torn(path):
        try:
            with held(), get_lock_file(backend._lock):
                pass
        except OSError:  # cannot lock or write it: a reader can still skip the torn line, as Optuna does
            pass
    return backend


def _is_journal(path: Path) -> bool:
    """Whether ``path`` is missing, empty or holds a record among its first lines (else: someone else's file)."""
    try:
        with open(path, "rb") as f:
            lines = [line for line in itertools.islice(f, 64)]
    except FileNotFoundError:
        return True
    whole = [line for line in lines if line.endswith(b"\n")]
    if not whole:
        return not lines or _is_torn_log(lines[0])
    return any(_record(line) is not None for line in whole)


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
        backup = _write_backup(path, tail)  # durable before anything is cut from the journal
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    print(f"enstune: {path} ended in an unfinished line ({len(tail)} bytes, an interrupted write); "
          f"moved it to {backup.name}", file=sys.stderr)
    return backup


def set_aside_stray_lines(path: Path, stray: dict[int, bytes]) -> Path | None:
    """Overwrite whole lines of ``path`` that are no records (``stray``: offset -> line) with records that change nothing.

    Their bytes go to one backup file beside the journal, with one notice; a line no longer there
    as it was found is left alone. Only while holding the journal's lock.
    """
    found, repairs = sorted(stray.items()), []
    stray.clear()
    with open(path, "r+b") as f:
        for offset, line in found:
            f.seek(offset)
            if f.read(len(line)) == line:
                repairs.append((offset, line))
        if not repairs:
            return None
        backup = _write_backup(path, b"".join(line for _, line in repairs))
        for offset, line in repairs:
            f.seek(offset)
            f.write(_nothing(len(line)))
        f.flush()
        os.fsync(f.fileno())
    at = ", ".join(f"byte {offset}" for offset, _ in repairs[:3]) + (", …" if len(repairs) > 3 else "")
    print(f"enstune: {path} held {len(repairs)} line(s) that are no journal records ({at}); moved them to "
          f"{backup.name} and read on", file=sys.stderr)
    return backup


def _nothing(length: int) -> bytes:
    """A line of exactly ``length`` bytes (newline included) that Optuna's replay counts and skips."""
    body = json.dumps({"op_code": _NOTHING}, separators=(",", ":")).encode()
    if len(body) + 1 > length:  # too short for any record: an empty object, which enstune's reader skips
        body = b"{}"[:max(length - 1, 0)]
    return body + b" " * (length - 1 - len(body)) + b"\n"


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
