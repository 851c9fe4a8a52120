"""A worker: takes a study's trials one by one until its budget is spent, and never loses one.

Heartbeats (on every storage) let any worker fail and re-queue the trial of a worker that died;
Ctrl-C and SIGTERM re-queue the trial in progress before the worker leaves; a trial that fails
for any reason but its own divergence goes back to the queue, up to a retry limit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from enstune.claims import claims_for
from enstune.config import StudySpec
from enstune.data import MIN_SHARE
from enstune.errors import ConfigError, EnstuneError
from enstune.evaluation.trial import evaluation_cost
from enstune.executor import Executor
from enstune.members import Workspace
from enstune.objective import Objective, OverBudget
from enstune.progress import Reporter
from enstune.pruning import make_pruner, make_sampler
from enstune.storage import MAX_RETRY, PATIENCE, enable_heartbeat, home_dir, open_storage, open_storage_patiently
from enstune.storage import retry
from enstune.storage.heartbeat import TakenOver, beating, beats_for, fenced
from enstune.study import READY_TIMEOUT, Census, _load, budget, census, spec_of
from enstune.storage import optuna_private as op
from enstune.storage.optuna_private import is_heartbeat_enabled, storage_of
from enstune.storage.signals import held

MAX_HEARTBEAT = 86_400  # seconds: a day between heartbeats is as long as one may be
log = logging.getLogger("enstune.worker")


def _open_trials(study: optuna.Study, spec: StudySpec, counted: Census | None = None) -> tuple[int, int]:
    """(trials a worker may start now, trials running): queued ones plus the unspent budget.

    A grid study queued all its points at create: only the queue may be drawn from, so that
    each point runs exactly once (a failed point is re-queued, never replaced by a sampled one).
    ``counted``: the study's census, if just taken.
    """
    states = (counted or census(study)).states
    live = states.total() - states[TrialState.FAIL]
    unspent = 0 if spec.sampler == "grid" and spec.space else max(budget(spec) - live, 0)
    return states[TrialState.WAITING] + unspent, states[TrialState.RUNNING]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: Optuna fails the running trial and hands this on, as it does Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcome = ""  # what the worker did with its trial, set on the way out


def _interrupt(signum: int, _frame: Any) -> None:
    # A second signal ends the process at once, by the system's default action: a KeyboardInterrupt
    # could land in an interpreter's exit hook and print a traceback there. Storage writes that must
    # not be cut hold the signal until they end (enstune.storage.signals.held).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _SIGNALLED.append(Interrupted(signum))
    raise _SIGNALLED[-1]


# The signal raised during the trial in progress: Optuna may lose it on the way out (its trial found failed
# elsewhere makes its own error), and the worker must still stop.
_SIGNALLED: list[Interrupted] = []


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise Interrupted in the main thread; after one, the next ends the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except Interrupted:
        raise  # the default actions set by _interrupt stay while the worker winds down
    except BaseException:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
        raise
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def requeue(study: optuna.Study, trial_id: int) -> int | None:
    """Queue failed trial ``trial_id``'s point again (``enstune.storage.retry``); the retry's attempt number.

    None when the trial did not fail, was over the budget, or its point raised more errors than
    the retry limit allows (an interruption never counts).
    """
    trial = storage_of(study).get_trial(trial_id)
    if trial.state != TrialState.FAIL or trial.user_attrs.get(retry.OVER_BUDGET):
        return None
    again = retry.requeue(study, trial)
    return None if again is None else retry.attempt(again)


def requeue_failed(name: str, storage_url: str | None = None) -> list[tuple[int, int]]:
    """Queue again every point of study ``name`` that failed for good, its counts afresh: (trial, retry) numbers."""
    study = _load(name, open_storage(storage_url))
    queued = []
    for trial in retry.failed_for_good(study.get_trials(deepcopy=False)):
        again = retry.requeue(study, trial, fresh=True)
        assert again is not None
        queued.append((trial.number, again.number))
    return queued


class _Recorded:
    """The objective, with what a trial's own work raised recorded on the trial before Optuna fails it.

    A trial failed without that record was interrupted (a signal, a worker gone, the storage lost),
    and its retry costs its point nothing (``enstune.storage.retry``).
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def __call__(self, trial: optuna.Trial) -> float:
        from enstune.training import stop_when

        beats = beating(op.trial_id(trial))
        try:
            # Once another worker failed the trial (its heartbeats looked silent), training stops within a step.
            with stop_when(beats.check) if beats is not None else contextlib.nullcontext():
                return self.objective(trial)
        except (optuna.TrialPruned, OverBudget):
            if fenced(op.trial_id(trial), storage_of(trial.study)):
                _LEFT.add(trial.number)
            raise
        except Exception as exc:
            if _taken_over(exc) or fenced(op.trial_id(trial), storage_of(trial.study)):
                _LEFT.add(trial.number)
            elif not _storage_fault(exc) and _interrupted_too() is None:  # over a signal: interrupted, no error
                text = str(exc).splitlines()[0] if str(exc) else ""
                with contextlib.suppress(Exception), held():  # the error, not this write, is reported
                    storage_of(trial.study).set_trial_system_attr(op.trial_id(trial), retry.ERROR_ATTR,
                                                        f"{type(exc).__name__}: {text}"[:1000])
            raise


def _storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the storage being gone or full, not from the trial's work."""
    from enstune.storage.resilient import caused_by, is_transient

    def storage(e: BaseException) -> bool:
        if isinstance(e, retry.StorageUnavailable):
            return True
        try:
            import grpc
        except ImportError:  # pragma: no cover - grpc comes with optuna's proxy
            return False
        return isinstance(e, grpc.RpcError)

    return is_transient(exc) or caused_by(exc, storage)


def _taken_over(exc: BaseException) -> bool:
    """Whether ``exc`` says this worker's trial was failed by another one (a long storage outage)."""
    from enstune.storage.resilient import caused_by

    # Anywhere in the chain: a trial that completed here after it was failed elsewhere ends in Optuna's
    # "Should not reach" assertion, raised over its "Cannot tell a FAIL trial".
    return caused_by(exc, lambda e: isinstance(e, (optuna.exceptions.UpdateFinishedTrialError, TakenOver)) or (
        isinstance(e, ValueError) and str(e).startswith("Cannot tell a")))


_LEFT: set[int] = set()  # numbers of trials this worker left because another one had failed them


class _QuietLeft(logging.Filter):
    """Drops Optuna's lines on a trial this worker left (failed elsewhere): the worker says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed") for n in _LEFT)


@contextlib.contextmanager
def _own_heartbeats() -> Iterator[None]:
    """Within: ``study.optimize`` beats with enstune's heartbeat thread (``enstune.storage.heartbeat.Beats``).

    Optuna's own thread waits out a lost database with back-off longer than an interval, and
    dies when a call fails for good; enstune's beats again within seconds of the storage's return
    and says when another worker failed the trial, which then stops here.
    """
    from enstune.storage.optuna_private import heartbeat_threads, optimize_logger

    quiet = _QuietLeft()
    logging.getLogger(optimize_logger()).addFilter(quiet)
    try:
        with heartbeat_threads(beats_for):
            yield
    finally:
        logging.getLogger(optimize_logger()).removeFilter(quiet)


def _interrupted_too() -> Interrupted | None:
    """The signal that cut short the trial in progress, if one did (another error may be raised over it: Optuna's
    when the trial was failed elsewhere meanwhile, or a library's clean-up that the signal cut)."""
    return _SIGNALLED[-1] if _SIGNALLED else None


def _heartbeat(spec: StudySpec, asked: int | None) -> int:
    """The worker's heartbeat interval: the study's, or longer when asked (never shorter: workers must agree)."""
    if asked is None:
        return spec.heartbeat
    if not spec.heartbeat <= asked:
        raise ConfigError(f"--heartbeat must be in {spec.heartbeat}..{MAX_HEARTBEAT} seconds (this study's interval "
                          f"is {spec.heartbeat}: a shorter one would fail other workers' live trials), got {asked}")
    return asked


def run(name: str, storage_url: str | None = None, n_trials: int | None = None, devices: str = "cpu",
        timeout: float | None = None, reporter_factory: Any = None, heartbeat: int | None = None,
        artifacts: str | None = None, per_member: int = 1, wait_storage: float = PATIENCE) -> optuna.Study:
    """Work on study ``name`` until ``n_trials`` more trials, the study's budget, or ``timeout``.

    The worker records heartbeats (every storage); before each trial, and while others still
    run when the budget is spent, it fails trials whose worker went silent or died, which
    re-queues them for any worker to resume.
    """
    from enstune.processes import slots
    from enstune.storage import open_artifacts

    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials must be >= 0, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be a number of seconds > 0, got {timeout}")
    if not wait_storage >= 0:
        raise ConfigError(f"--wait-storage must be a number of seconds >= 0, got {wait_storage}")
    if heartbeat is not None and not 1 <= heartbeat <= MAX_HEARTBEAT:
        raise ConfigError(f"--heartbeat must be at least 1 second and at most {MAX_HEARTBEAT}, got {heartbeat}")
    # A storage that is down is waited for, as every later call waits for it: a worker started during
    # a restart is not lost. The study's spec, read before the study is loaded, says its sampler,
    # pruner and heartbeat; the heartbeat is then turned on in the storage already open.
    storage = open_storage_patiently(storage_url, patience=wait_storage)
    spec = spec_of(storage, name, wait=READY_TIMEOUT)
    _check_shares(spec, per_member)
    storage = enable_heartbeat(storage, _heartbeat(spec, heartbeat))
    study = _load(name, storage, make_sampler(spec), make_pruner(spec))
    executor = Executor(slots(devices, per_member, spec.task, home_dir(), artifacts))  # processes start on first use
    todo, running = _open_trials(study, spec)
    todo = todo if n_trials is None else min(n_trials, todo)
    if todo == 0 and not (running and is_heartbeat_enabled(storage)):
        return study
    ws = Workspace(spec.task, home_dir(), open_artifacts(artifacts), claims_for(storage, name))
    freeze = spec.space.get("freeze")
    ws.preflight(executor.devices[0], spec.finetune, spec.tap, int(max(freeze.choices or (freeze.high,))) if freeze else 0)
    reporter = reporter_factory(todo) if reporter_factory else Reporter()
    objective = Objective(spec, ws, executor, reporter)
    reporter.evaluation_planned(evaluation_cost(ws.data, spec))  # the worker's first line: what each trial will cost
    deadline = None if timeout is None else time.monotonic() + timeout
    with reporter, contextlib.closing(executor):
        work(study, spec, objective, reporter, n_trials, deadline)
    return study


def _check_shares(spec: StudySpec, per_member: int) -> None:
    """Refuse members over ``per_member`` processes whose batches leave a process fewer than two examples."""
    axis = spec.space.get("batch_size")
    smallest = min(axis.choices or (axis.low,)) if axis is not None else spec.finetune.batch_size
    if per_member > 1 and smallest < MIN_SHARE * per_member:
        raise ConfigError(f"--per-member {per_member} shares each batch out over {per_member} processes, each of "
                          f"which needs {MIN_SHARE} examples: the study's batch_size {smallest:g} is below "
                          f"{MIN_SHARE * per_member}")


def work(study: optuna.Study, spec: StudySpec, objective: Objective, reporter: Reporter,
         n_trials: int | None = None, deadline: float | None = None) -> int:
    """Run ``objective`` on ``study``'s trials one by one until ``n_trials``, the budget, or ``deadline``; how many ran.

    Before each trial one census of the study says whether a trial may start, lets a sampled
    trial be admitted without counting again, and gives the best value the previous trial is
    reported with: the census the previous trial took with its results (its end the only change
    this worker made since), else one query on a database. While others still run when nothing
    may start, the worker fails the trials of workers gone silent every heartbeat interval, which
    re-queues them.
    """
    storage = storage_of(study)
    beats = optuna.storages.fail_stale_trials if is_heartbeat_enabled(storage) else None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ran, ended, pending = 0, None, None
    with warnings.catch_warnings(), _own_heartbeats():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
        while (n_trials is None or ran < n_trials) and (deadline is None or time.monotonic() < deadline):
            counted, pending = pending or census(study), None
            if ended is not None:
                reporter.trial_done(*ended, counted.best)
                ended = None
            can_start, running = _open_trials(study, spec, counted)
            if not can_start:
                if not (running and beats):
                    break
                time.sleep(storage.get_heartbeat_interval())  # a silent trial fails after two intervals
                beats(study)
                continue
            objective.seen = counted.states
            _SIGNALLED.clear()
            try:
                with _signals_interrupt():
                    study.optimize(_Recorded(objective), n_trials=1, catch=(OverBudget,), gc_after_trial=False)
            except Interrupted as exc:
                exc.outcome = _outcome(study, objective)
                raise
            except Exception as exc:
                if (signal_ := _interrupted_too()) is not None:  # an error raised over the signal: still a stop
                    signal_.outcome = _left(study, objective) if _taken_over(exc) else _outcome(study, objective)
                    raise signal_ from None
                if _taken_over(exc):
                    log.warning("%s; carrying on", _left(study, objective))
                elif study.study_name not in optuna.get_all_study_names(storage):
                    raise EnstuneError(f"study {study.study_name!r} was deleted while this worker ran it; the "
                                       f"worker stops") from None
                else:
                    raise TrialFailed(_fate(study, objective, exc)) from exc
            else:
                ended = objective.ended
                pending = _after_tell(objective.counted, *ended, maximize)
            ran += 1
        if ended is not None:
            reporter.trial_done(*ended, (pending or census(study)).best)
    return ran


def _after_tell(counted: Census | None, state: str, value: float | None, maximize: bool) -> Census | None:
    """``counted``, taken while a trial of this worker still ran, once Optuna ended it in ``state`` with ``value``."""
    if counted is None or not counted.states[TrialState.RUNNING]:
        return None
    states = counted.states.copy()
    states[TrialState.RUNNING] -= 1
    states[TrialState[state]] += 1
    best = counted.best
    if state == "COMPLETE" and value is not None:
        best = value if best is None else (max if maximize else min)(best, value)
    return Census(states, best)


class TrialFailed(EnstuneError):
    """A trial's own work raised: the worker stops and says what became of its point."""


def _fate(study: optuna.Study, objective: Objective, exc: Exception) -> str:
    """Re-queue the point of the trial that raised ``exc`` (while its errors allow); say what became of it."""
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if objective.trial_id is None:
        return text
    try:
        trial = storage_of(study).get_trial(objective.trial_id)
        with held():
            attempt = requeue(study, objective.trial_id)
    except Exception:  # noqa: BLE001 - the storage is gone too: the trial is retried as a silent worker's
        return f"{text} (its trial is retried once its heartbeat goes silent)"
    if attempt is not None:
        raised = len(retry.errors(storage_of(study).get_trial(objective.trial_id)))
        return f"trial {trial.number} failed ({text}); re-queued (attempt {attempt}, error {raised} of at most " \
               f"{MAX_RETRY + 1})"
    if trial.state != TrialState.FAIL:
        return f"trial {trial.number} failed ({text}); it is retried once its heartbeat goes silent"
    return f"trial {trial.number} failed for good ({text}): its point raised {len(retry.errors(trial))} errors; " \
           f"`enstune study requeue {study.study_name}` queues it again"


def _left(study: optuna.Study, objective: Objective) -> str:
    """What became of the trial another worker failed while this one ran it (it judged its heartbeats silent)."""
    try:
        number = f"trial {storage_of(study).get_trial(objective.trial_id).number}" if objective.trial_id is not None \
            else "a trial"
    except Exception:  # noqa: BLE001 - the storage is away: its id names it
        number = f"trial id {objective.trial_id}"
    return (f"{number} of this worker was failed by another worker (its heartbeats had not reached the storage "
            f"for two intervals) and is retried there; this worker left it after {objective.members_done} "
            f"member(s), which stay in the member cache")


def _outcome(study: optuna.Study, objective: Objective) -> str:
    """Re-queue the trial an interrupt cut short; say what became of it."""
    if objective.trial_id is None:
        return "no trial was running"
    trial = storage_of(study).get_trial(objective.trial_id)
    if trial.state == TrialState.RUNNING:  # cut inside Optuna's own bookkeeping: the heartbeat retries it
        return f"trial {trial.number} is left running; a worker retries it when its heartbeat goes silent"
    if trial.state != TrialState.FAIL:
        return "no trial was running"
    with held():  # a second Ctrl-C now would leave the point failed and never queued again
        attempt = requeue(study, objective.trial_id)
    fate = f"re-queued (attempt {attempt})" if attempt is not None else "not re-queued (it failed for good)"
    return f"trial {trial.number} {fate}; its {objective.members_done} finished member(s) stay in the member cache"
