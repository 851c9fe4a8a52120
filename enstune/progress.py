"""Progress of a worker: trial, member, epoch and the current best, on a rich display or as log lines."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Receives a worker's events; this base class ignores them."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def trial_started(self, number: int, params: dict[str, Any], members: int) -> None:
        """A trial begins."""

    def member_started(self, index: int, members: int, epochs: int, step: str = "") -> None:
        """Member ``index`` of ``members`` begins, planned for ``epochs`` (0: not known); with ``step``, a step it waits for."""

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        """An epoch of the current member ended."""

    def member_done(self, index: int, val_ens_acc: float, cached: bool) -> None:
        """Member ``index`` is done; the ensemble of 1..index reached ``val_ens_acc``."""

    def evaluating(self, name: str, step: int, steps: int) -> None:
        """Evaluator ``name``, ``step`` of ``steps``, begins on the trial's members."""

    def weight_model_done(self) -> None:
        """One more weight-space model (a soup, a point on a segment) was built and its BN recalibrated."""

    def weight_model_progress(self, images: int, total: int) -> None:
        """The weight-space model being built has had ``images`` of its ``total`` BN images so far."""

    def evaluation_planned(self, line: str) -> None:
        """What the evaluation of each trial will cost (``enstune.evaluation.trial.evaluation_cost``), said once as work starts."""

    def trial_done(self, state: str, value: float | None, best: float | None) -> None:
        """The trial ended in ``state``."""


class RichReporter(Reporter):
    """Two bars: trials of this worker's budget, epochs of the member in training."""

    def __init__(self, budget: int, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self._trials = self._progress.add_task("trials", total=budget)
        self._member = self._progress.add_task("member", total=1, visible=False)
        self._best: float | None = None
        self._evaluator, self._models = "", 0
        self._trial = ""

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _best_text(self) -> str:
        return "best —" if self._best is None else f"best {self._best:.4f}"

    def trial_started(self, number: int, params: dict[str, Any], members: int) -> None:
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        self._trial = f"trial {number} [dim]{shown}[/]"
        self._progress.update(self._trials, description=f"{self._trial} · {self._best_text()}")

    def member_started(self, index: int, members: int, epochs: int, step: str = "") -> None:
        what = f"step {step} for member {index}/{members}" if step else f"member {index}/{members}"
        self._progress.update(self._member, description=f"  {what} epochs", total=max(epochs, 1), completed=0,
                              visible=True)

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        self._progress.update(self._member, total=epochs, completed=epoch)

    def member_done(self, index: int, val_ens_acc: float, cached: bool) -> None:
        note = " (cached)" if cached else ""
        self._progress.update(self._member, description=f"  member {index} val ens {val_ens_acc:.4f}{note}")

    def evaluating(self, name: str, step: int, steps: int) -> None:
        # Soups, segments and OOD sets can take longer than training: the bar says which and how far.
        self._evaluator, self._models = name, 0
        self._progress.update(self._member, description=f"  evaluating {name}", total=steps, completed=step - 1,
                              visible=True)

    def weight_model_progress(self, images: int, total: int) -> None:
        self._progress.update(self._member, description=f"  evaluating {self._evaluator} · model "
                                                        f"{self._models + 1}: BN {images}/{total} images")

    def weight_model_done(self) -> None:
        self._models += 1
        self._progress.update(self._member, description=f"  evaluating {self._evaluator} · {self._models} models")

    def evaluation_planned(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False)

    def trial_done(self, state: str, value: float | None, best: float | None) -> None:
        self._best = best
        self._progress.update(self._member, visible=False)
        self._progress.update(self._trials, advance=1, description=f"{self._trial} {state} · {self._best_text()}")


def timestamp(when: float | None = None) -> str:
    """Local time (now, or epoch seconds ``when``) in ISO 8601 to the second, with its UTC offset."""
    moment = datetime.now() if when is None else datetime.fromtimestamp(when)
    return moment.astimezone().isoformat(timespec="seconds")


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


class LogReporter(Reporter):
    """One timestamped plain line per event on ``stream``, flushed at once: a batch job's log as it happens.

    Epochs and weight-space models come often: each member's first and last epoch are written,
    and in between at most one line every ``interval`` seconds of ``clock`` (the same for the
    models an evaluator builds), so a log stays short however long a member trains.
    """

    def __init__(self, stream: TextIO, budget: int, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream, self._budget, self._interval, self._clock = stream, budget, interval, clock
        self._lock = threading.Lock()  # members on several devices report from their own threads
        self._trial: int | None = None
        self._started = 0.0
        self._members = 0
        self._member: dict[int, tuple[int, float]] = {}  # index -> (epochs, start)
        self._epochs: dict[str, int] = {}  # job -> the epochs its training reported (a sampled member reports none)
        self._thread: dict[int, str] = {}  # thread -> the job it trains ("member 2/5", "step … for member 2/5")
        self._last = "member ?"  # the job started last
        self._epoch_said: dict[str, float] = {}  # job -> when its last epoch line was written
        self._evaluator: tuple[str, int, int, float] | None = None  # name, step, steps, start
        self._models, self._models_said = 0, -math.inf
        self._ended = 0
        self._planned = ""  # the evaluation's cost per trial, said with the first line
        self._model_began = 0.0  # when the weight-space model being built began

    def _say(self, text: str) -> None:
        with self._lock:
            self._stream.write(f"{timestamp()} {text}\n")
            self._stream.flush()

    def _where(self) -> str:
        return "trial ?" if self._trial is None else f"trial {self._trial}"

    def __enter__(self) -> LogReporter:
        self._say(f"worker: up to {self._budget} trial(s)" + (f"; {self._planned}" if self._planned else ""))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:  # else the error itself is the last word
            self._say(f"worker: finished, {self._ended} trial(s) ended here")

    def trial_started(self, number: int, params: dict[str, Any], members: int) -> None:
        self._trial, self._started, self._members = number, self._clock(), members
        self._member.clear()
        self._epochs.clear()
        self._thread.clear()  # each trial's members run in threads of their own
        self._evaluator = None
        shown = " ".join(f"{k}={v}" for k, v in params.items()) or "no parameters"
        self._say(f"trial {number} started: {shown}, {members} member(s)")

    def member_started(self, index: int, members: int, epochs: int, step: str = "") -> None:
        what = f"step {step} for member {index}/{members}" if step else f"member {index}/{members}"
        if not step:
            self._member[index] = (epochs, self._clock())
        self._thread[threading.get_ident()] = what
        self._epoch_said.pop(what, None)
        self._last = what
        self._epochs.pop(what, None)
        self._say(f"{self._where()} {what} started" + (f": {epochs} epoch(s)" if epochs else ""))

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        # A job trained elsewhere may report from any thread: then the job started last.
        what = self._thread.get(threading.get_ident(), self._last)
        self._epochs[what] = epochs
        now = self._clock()
        if epoch not in (1, epochs) and now - self._epoch_said.get(what, -math.inf) < self._interval:
            return
        self._epoch_said[what] = now
        self._say(f"{self._where()} {what} epoch {epoch}/{epochs}: loss {loss:.4f}")

    def member_done(self, index: int, val_ens_acc: float, cached: bool) -> None:
        planned, start = self._member.get(index, (0, self._clock()))
        epochs = self._epochs.get(f"member {index}/{self._members}", planned)  # a cached member: as planned
        how = "cached" if cached else "trained"
        self._say(f"{self._where()} member {index}/{self._members} done: {epochs} epoch(s), "
                  f"val ens acc {val_ens_acc:.4f}, {how} in {self._clock() - start:.1f} s")

    def _evaluated(self) -> None:
        """The last evaluator's weight-space models, once it is over (when it built any)."""
        if self._models:
            name, step, steps, start = self._evaluator or ("evaluation", 0, 0, self._clock())
            where = f" ({step}/{steps})" if steps else ""
            self._say(f"{self._where()} evaluated {name}{where}: {self._models} weight-space model(s) "
                      f"in {self._clock() - start:.1f} s")
        self._evaluator, self._models, self._models_said = None, 0, -math.inf

    def evaluating(self, name: str, step: int, steps: int) -> None:
        self._evaluated()
        self._evaluator = (name, step, steps, self._clock())
        self._model_began = self._clock()
        self._say(f"{self._where()} evaluating {name} ({step}/{steps})")

    def weight_model_done(self) -> None:
        self._models += 1
        self._model_began = self._clock()
        self._model_line(f"{self._models} weight-space model(s) so far")

    def weight_model_progress(self, images: int, total: int) -> None:
        # Inside one model that has taken an interval already: how far its BN pass is, at most once an interval,
        # as epochs do; a quick model says nothing of its pass.
        if self._clock() - self._model_began >= self._interval:
            self._model_line(f"model {self._models + 1}, BN {images}/{total} images")

    def _model_line(self, text: str) -> None:
        now = self._clock()
        if now - self._models_said < self._interval:
            return
        self._models_said = now
        name = self._evaluator[0] if self._evaluator else "evaluation"
        self._say(f"{self._where()} evaluating {name}: {text}")

    def evaluation_planned(self, line: str) -> None:
        self._planned = line

    def trial_done(self, state: str, value: float | None, best: float | None) -> None:
        self._evaluated()
        self._ended += 1
        if self._trial is None:
            self._say(f"trial ended {state} before it started: best {_acc(best)}")
            return
        self._say(f"trial {self._trial} {state}: value {_acc(value)}, best {_acc(best)}, "
                  f"in {self._clock() - self._started:.1f} s")
        self._trial = None


class _LineFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>`` on one line; an exception adds its type and message, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = " ".join(part.strip() for part in record.getMessage().splitlines() if part.strip())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return f"{timestamp(record.created)} {record.levelname} {record.name}: {text}"


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


@contextlib.contextmanager
def log_lines(stream: TextIO) -> Iterator[None]:
    """Within: log records (enstune's, Optuna's, any library's) and Python warnings as timestamped lines on ``stream``.

    Everything is put back on the way out: the root logger's handlers, Optuna's own handler,
    how warnings are shown.
    """
    import optuna

    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LineFormatter())
    root, optuna_log = logging.getLogger(), logging.getLogger("optuna")
    saved = optuna_log.handlers[:], optuna_log.propagate
    # Optuna writes its records in a format of its own: here they reach the root's handler instead.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():  # which restores showwarning
            warnings.showwarning = _log_warning
            yield
    finally:
        root.removeHandler(handler)
        optuna_log.handlers[:], optuna_log.propagate = saved


@contextlib.contextmanager
def reporting(stream: TextIO, console: Console) -> Iterator[Callable[[int], Reporter]]:
    """Within: a worker's reporter factory (its budget -> a reporter) for progress shown on ``stream``.

    A person at a terminal watches live bars on ``console``; a batch job's log (a file, a pipe) gets a
    timestamped line per event as it happens, and so do log records and warnings.
    """
    if stream.isatty():
        yield lambda budget: RichReporter(budget, console=console)
        return
    with log_lines(stream):
        yield lambda budget: LogReporter(stream, budget)
