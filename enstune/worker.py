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
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from enstune.claims import claims_for
from enstune.config import StudySpec
from enstune.errors import ConfigError, EnstuneError
from enstune.executor import Executor
from enstune.members import Workspace
from enstune.objective import Objective, OverBudget
from enstune.progress import Reporter
from enstune.pruning import MethodAwarePruner
from enstune.storage import MAX_RETRY, home_dir, open_storage
from enstune.study import READY_TIMEOUT, _load, best_value, budget, load_spec, trial_states

MAX_HEARTBEAT = 86_400  # seconds: a day between heartbeats is as long as one may be
log = logging.getLogger("enstune.worker")


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    # A grid study queues every point at create (grid_points): its trials carry fixed parameters
    # and no sampler chooses one. Optuna's GridSampler would only get in the way: on a grid of one
    # point its after_trial fails on the queued trial ("grid_id").
    if spec.sampler == "tpe" and spec.space:
        return optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    inner = optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup_trials, n_warmup_steps=0)
    return MethodAwarePruner(inner, spec.method)


def _open_trials(study: optuna.Study, spec: StudySpec) -> tuple[int, int]:
    """(trials a worker may start now, trials running): queued ones plus the unspent budget.

    A grid study queued all its points at create: only the queue may be drawn from, so that
    each point runs exactly once (a failed point is re-queued, never replaced by a sampled one).
    """
    states = trial_states(study)
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
    # A second signal ends the process at once: the default handlers are back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise Interrupted in the main thread (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


@contextlib.contextmanager
def _deferred_signals() -> Iterator[None]:
    """Within: SIGINT and SIGTERM wait (a few storage writes) and are delivered on the way out."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def requeue(study: optuna.Study, trial_id: int) -> int | None:
    """Put failed trial ``trial_id``'s parameters back in the queue as Optuna's heartbeat retry does.

    Returns the retry's number of attempts so far, or None when the trial did not fail, was over
    the budget, or has been retried ``MAX_RETRY`` times already.
    """
    trial = study._storage.get_trial(trial_id)
    if trial.state != TrialState.FAIL or trial.user_attrs.get("over_budget"):
        return None
    queued = trial_states(study)[TrialState.WAITING]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)(study, trial)
    if trial_states(study)[TrialState.WAITING] == queued:
        return None
    return len(trial.system_attrs.get("retry_history", [])) + 1


def _taken_over(exc: Exception) -> bool:
    """Whether ``exc`` says this worker's trial was failed by another one (a long storage outage)."""
    return isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a"))


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
        artifacts: str | None = None, per_member: int = 1) -> optuna.Study:
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
    if heartbeat is not None and not 1 <= heartbeat <= MAX_HEARTBEAT:
        raise ConfigError(f"--heartbeat must be at least 1 second and at most {MAX_HEARTBEAT}, got {heartbeat}")
    first = open_storage(storage_url)  # the study's spec says the heartbeat the real storage opens with
    spec = load_spec(_load(name, first), wait=READY_TIMEOUT)
    # Else its pooled database connection (or its channel to a storage proxy) stays open for the worker's life, unused.
    if isinstance(first, optuna.storages.RDBStorage):
        first.engine.dispose()
    elif isinstance(first, optuna.storages.GrpcStorageProxy):
        first.close()
    heartbeat = _heartbeat(spec, heartbeat)
    storage = open_storage(storage_url, heartbeat=heartbeat)
    study = _load(name, storage)
    executor = Executor(slots(devices, per_member, spec.task, home_dir(), artifacts))  # processes start on first use
    beats = optuna.storages.fail_stale_trials if is_heartbeat_enabled(storage) else None
    todo, running = _open_trials(study, spec)
    todo = todo if n_trials is None else min(n_trials, todo)
    if todo == 0 and not (running and beats):
        return study
    ws = Workspace(spec.task, home_dir(), open_artifacts(artifacts), claims_for(storage, name))
    freeze = spec.space.get("freeze")
    ws.preflight(executor.devices[0], spec.finetune, spec.tap, int(max(freeze.choices or (freeze.high,))) if freeze else 0)
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec), pruner=_pruner(spec))
    reporter = reporter_factory(todo) if reporter_factory else Reporter()
    objective = Objective(spec, ws, executor, reporter)
    deadline = None if timeout is None else time.monotonic() + timeout

    def done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reporter.trial_done(trial.state.name, trial.value, best_value(study))

    ran = 0
    with reporter, warnings.catch_warnings(), contextlib.closing(executor):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
        while (n_trials is None or ran < n_trials) and (deadline is None or time.monotonic() < deadline):
            can_start, running = _open_trials(study, spec)
            if not can_start:
                if not (running and beats):
                    break
                time.sleep(heartbeat)  # a silent trial fails after two intervals and is queued again
                beats(study)
                continue
            try:
                with _signals_interrupt():
                    study.optimize(objective, n_trials=1, callbacks=[done], catch=(OverBudget,),
                                   gc_after_trial=False)
            except Interrupted as exc:
                exc.outcome = _outcome(study, objective)
                raise
            except Exception as exc:
                if _taken_over(exc):
                    log.warning("a trial of this worker was retried elsewhere after a storage outage; carrying on")
                elif name not in optuna.get_all_study_names(storage):
                    raise EnstuneError(f"study {name!r} was deleted while this worker ran it; the worker stops") \
                        from None
                else:
                    if objective.trial_id is not None:
                        requeue(study, objective.trial_id)  # the point is not lost; the error is still reported
                    raise
            ran += 1
    return study


def _outcome(study: optuna.Study, objective: Objective) -> str:
    """Re-queue the trial an interrupt cut short; say what became of it."""
    if objective.trial_id is None:
        return "no trial was running"
    trial = study._storage.get_trial(objective.trial_id)
    if trial.state == TrialState.RUNNING:  # cut inside Optuna's own bookkeeping: the heartbeat retries it
        return f"trial {trial.number} is left running; a worker retries it when its heartbeat goes silent"
    if trial.state != TrialState.FAIL:
        return "no trial was running"
    with _deferred_signals():  # a second Ctrl-C now would leave the point failed and never queued again
        attempt = requeue(study, objective.trial_id)
    fate = f"re-queued (attempt {attempt + 1})" if attempt is not None else "not re-queued (retry limit reached)"
    return f"trial {trial.number} {fate}; its {objective.members_done} finished member(s) stay in the member cache"
