"""Storage writes that a signal must not cut: SIGINT and SIGTERM wait until the write ends.

A Python signal handler that raises (Ctrl-C's KeyboardInterrupt, the worker's ``Interrupted``)
raises wherever the main thread happens to be. Inside the journal's lock that is harmful: Optuna's
symlink lock, interrupted while it waits, releases the lock it does not hold (another writer's),
and interrupted just after its release, it fails on the lock file it already removed. Blocking the
signals with ``pthread_sigmask`` is not enough either: the kernel then hands them to another thread
(Optuna's heartbeat, torch's), and Python still runs the handler in the main thread. So within
``held()`` the main thread's handlers are swapped for one that only notes the signal, and the
noted signals are raised again once the write is over, for the handlers in place then.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_noted: list[int] = []  # signals that arrived while held, in order


def _note(signum: int, _frame: Any) -> None:
    if signum not in _noted:
        _noted.append(signum)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within: SIGINT and SIGTERM are noted, not handled; on the way out they are raised again."""
    before = {sig: signal.getsignal(sig) for sig in _SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    # Another thread's write: Python runs handlers in the main thread only, so nothing can cut it. Within an
    # outer held(): its handler is in place, and it raises what it noted on its own way out.
    if not before or _note in before.values():
        yield
        return
    swapped: list[int] = []
    try:
        for sig, handler in before.items():
            if handler is not None:  # None: a handler set outside Python, left as it is
                signal.signal(sig, _note)
                swapped.append(sig)
        yield
    finally:
        for sig in swapped:
            signal.signal(sig, before[sig])
        noted, _noted[:] = list(_noted), []
        for sig in noted:
            signal.raise_signal(sig)
