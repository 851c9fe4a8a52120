"""Optuna glue: spec → study, trial → TrialConfig → plan → members → reports, attrs and pruning."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import random
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from enstune.checks import check_spec, load_checked, read_params
from enstune.config import Param, StudySpec, TrialConfig, spec_from_dict, to_dict
from enstune.errors import ConfigError, DivergedError, EnstuneError
from enstune.evaluation import EnsembleCurve, pack_correct
from enstune.evaluation.evaluators import evaluate
from enstune.executor import Executor
from enstune.members import MemberResult, Workspace
from enstune.methods import get_method, regularize
from enstune.progress import Reporter
from enstune.pruning import MethodAwarePruner
from enstune.report import attach_trial_pictures
from enstune.storage import home_dir, mask_url, open_storage, resolve_url
from enstune.storage.resilient import ResilientRDBStorage

SPEC_ATTR = "spec"
RECIPE_PARAMS = ("epochs", "lr", "weight_decay")
READY_TIMEOUT = 30.0  # seconds a worker waits for a concurrent `study create` to finish
DEFAULT_HEARTBEAT = 60  # seconds; a dead worker's trial is retried after two silent intervals

optuna.logging.set_verbosity(optuna.logging.WARNING)
# A failing trial's error reaches the user once, as the worker's one-line error; Optuna's own
# report of it would add a traceback.
logging.getLogger("optuna.study._optimize").addFilter(lambda record: " failed with " not in record.getMessage())
log = logging.getLogger("enstune.study")


def _suggest(trial: optuna.Trial, name: str, p: Param) -> Any:
    if p.choices:
        return trial.suggest_categorical(name, list(p.choices))
    if all(isinstance(v, int) for v in (p.low, p.high)) and (p.step is None or isinstance(p.step, int)):
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step)


def trial_config(trial: optuna.Trial, spec: StudySpec) -> TrialConfig:
    """Sample the spec's search space into a TrialConfig; a trial samples only what its method reads."""
    method = _suggest(trial, "method", spec.space["method"]) if "method" in spec.space else spec.method
    read = read_params(spec, method)
    values = {name: _suggest(trial, name, p) for name, p in spec.space.items() if name in read and name != "method"}
    recipe = dataclasses.replace(spec.finetune, **{k: values.pop(k) for k in RECIPE_PARAMS if k in values})
    return TrialConfig(task=spec.task, recipe=recipe, method=method, members=spec.members,
                       regularizer=spec.regularizer, tap=spec.tap, subsample=spec.subsample, **values)


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


def load_spec(study: optuna.Study, wait: float = 0.0) -> StudySpec:
    """The StudySpec stored with ``study``, waiting up to ``wait`` seconds for a creator to store it."""
    return check_spec(spec_from_dict(_wait_ready(study, wait)))


def _load(name: str, storage: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise EnstuneError(f"no study named {name!r} in this storage") from None


def budget(spec: StudySpec) -> int:
    """The study-wide number of trials: ``n_trials``, and never more than a grid holds."""
    return min(spec.n_trials, len(grid_points(spec))) if spec.sampler == "grid" and spec.space else spec.n_trials


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every distinct point of a grid space, in a seeded shuffled order (early trials cover the grid).

    In a study of several methods a point keeps only what its method reads: Local DE's trials
    do not repeat once per cycle multiplier.
    """
    names = list(spec.space)
    points: list[dict[str, Any]] = []
    for values in itertools.product(*(spec.space[n].choices for n in names)):
        point = dict(zip(names, values))
        read = read_params(spec, point.get("method", spec.method))
        if (point := {k: v for k, v in point.items() if k in read}) not in points:
            points.append(point)
    random.Random(spec.seed).shuffle(points)
    return points


def _wait_ready(study: optuna.Study, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """The stored spec dict; a study being created by another process gets ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (data := study.user_attrs.get(SPEC_ATTR)) is None:
        if time.monotonic() > deadline:
            raise EnstuneError(f"study {study.study_name!r} has no enstune spec (not created by enstune, or its "
                               f"creation was interrupted: delete it with `enstune study delete`)")
        time.sleep(0.2)
    return data


def create(template: str, name: str | None = None, storage_url: str | None = None,
           overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, bool]:
    """Create a study from a template; return (name, created). Same name and spec again: a no-op.

    Safe under races: of many concurrent creators exactly one creates the study and queues
    its grid; the spec is stored last, and is what marks the study ready for workers.
    """
    spec = load_checked(template, overrides)  # checked before anything touches the storage
    if name is not None and not name.strip():
        raise ConfigError("--name must not be empty")
    name = name or template
    storage = open_storage(storage_url)
    wanted = to_dict(spec)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        if _wait_ready(_load(name, storage)) != wanted:
            raise EnstuneError(f"study {name!r} already exists with a different spec") from None
        return name, False
    try:
        if spec.sampler == "grid" and spec.space:
            for params in grid_points(spec)[:budget(spec)]:
                study.enqueue_trial(params)
        study.set_user_attr(SPEC_ATTR, wanted)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return name, True


def _work(ws: Workspace, reporter: Reporter, members: int):  # noqa: ANN202
    def work(job, parent: MemberResult | None, device, refs: dict[int, MemberResult]) -> MemberResult:  # noqa: ANN001
        reporter.member_started(job.index, members, job.recipe.epochs)
        return ws.run(job, parent, device, on_epoch=reporter.epoch_done, refs=refs)

    return work


def _database(study: optuna.Study) -> ResilientRDBStorage | None:
    """The study's database storage (under Optuna's cache), or None for the embedded journal."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, ResilientRDBStorage) else None


def trial_states(study: optuna.Study, below: int | None = None) -> collections.Counter[TrialState]:
    """How many trials of ``study`` are in each state (only those numbered below ``below``, if given)."""
    if (db := _database(study)) is not None:
        return collections.Counter(db.count_trials(study._study_id, below))
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False) if below is None or t.number < below)


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` on ``trial``: in one transaction where the storage can, else one by one."""
    if (db := _database(trial.study)) is not None:
        db.set_trial_user_attrs(trial._trial_id, attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


class OverBudget(Exception):
    """Other workers spent the study's budget between this worker's check and its new trial."""


def _admit(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """This trial's system attributes; a freshly sampled trial beyond the study-wide budget is refused."""
    # The database's attribute table alone: Optuna's cache would read the whole trial for it.
    system = (_database(trial.study) or trial.study._storage).get_trial_system_attrs(trial._trial_id)
    if "fixed_params" not in system and "failed_trial" not in system:  # not queued: sampled here
        states = trial_states(trial.study, below=trial.number)
        if states.total() - states[TrialState.FAIL] >= budget(spec):
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"the study's budget of {budget(spec)} trials is spent")
    return system


class Objective:
    """Trains one trial's ensemble member by member, reporting validation ensemble accuracy."""

    def __init__(self, spec: StudySpec, ws: Workspace, executor: Executor, reporter: Reporter) -> None:
        self.spec, self.ws, self.executor, self.reporter = spec, ws, executor, reporter

    def __call__(self, trial: optuna.Trial) -> float:
        retry = "failed_trial" in _admit(trial, self.spec)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        cfg = trial_config(trial, self.spec)
        jobs = regularize(get_method(cfg.method).plan(cfg), cfg)
        judged = range(get_method(cfg.method).shared_members + 1, len(jobs))  # steps the pruner may cut
        self.reporter.trial_started(trial.number, trial.params, len(jobs))
        val, test = EnsembleCurve(self.ws.data.val.y), EnsembleCurve(self.ws.data.test.y)
        epochs: list[int] = []
        results: list[MemberResult] = []
        attrs: dict[str, Any] = {"val_size": len(self.ws.data.val), "input_size": self.ws.input_size}
        seconds = 0.0
        cached = 0
        try:
            for job, res in self.executor.run(jobs, _work(self.ws, self.reporter, len(jobs))):
                val.add(res.val_probs)
                test.add(res.test_probs)
                results.append(res)
                epochs.append(res.epochs)
                seconds += res.seconds
                cached += res.cached
                attrs.update({"val_ens_acc": val.ensembles, "test_ens_acc": test.ensembles,
                              "val_member_acc": val.members, "test_member_acc": test.members,
                              "member_epochs": epochs, "train_seconds": round(seconds, 3), "cached_members": cached})
                if retry and "resumed_from_member" not in attrs and (not res.cached or job.index == len(jobs)):
                    # A retried trial finds its predecessor's finished members in the cache.
                    attrs["resumed_from_member"] = job.index if not res.cached else job.index + 1
                trial.report(val.ensembles[-1], step=job.index)
                self.reporter.member_done(job.index, val.ensembles[-1], res.cached)
                if job.index in judged and self.spec.pruner != "none" and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at ensemble size {job.index}")
            attrs["val_correct"] = pack_correct(val.probs(), self.ws.data.val.y)
            members = self.ws.evaluation(results, self.executor.devices[0], cfg.seed, self.spec)
            attrs.update(evaluate(members, self.spec.evaluate, on_step=self.reporter.evaluating))
            attach_trial_pictures(trial, trial.params, attrs, self.ws.cache.store)
        except DivergedError as exc:
            attrs["diverged"] = True
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        finally:
            # Once per trial, not per member: each attribute is a database round trip. A trial
            # that dies here loses nothing: its retry reads the members back from the cache.
            set_user_attrs(trial, attrs)
        return val.ensembles[-1]


def _best(study: optuna.Study) -> float | None:
    try:
        return study.best_value  # one query on a database
    except ValueError:  # no trial has completed yet
        return None


def _open_trials(study: optuna.Study, spec: StudySpec) -> tuple[int, int]:
    """(trials a worker may start now, trials running): queued ones plus the unspent budget."""
    states = trial_states(study)
    live = states.total() - states[TrialState.FAIL]
    return states[TrialState.WAITING] + max(budget(spec) - live, 0), states[TrialState.RUNNING]


def _taken_over(exc: Exception) -> bool:
    """Whether ``exc`` says this worker's trial was failed by another one (a long storage outage)."""
    return isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a"))


def run(name: str, storage_url: str | None = None, n_trials: int | None = None, devices: str = "cpu",
        timeout: float | None = None, reporter_factory: Any = None, heartbeat: int = DEFAULT_HEARTBEAT,
        artifacts: str | None = None) -> optuna.Study:
    """Work on study ``name`` until ``n_trials`` more trials, the study's budget, or ``timeout``.

    On a database storage the worker records heartbeats; before each trial, and while others
    still run when the budget is spent, it fails trials whose worker went silent, which
    re-queues them for any worker to resume.
    """
    from enstune.executor import parse_devices
    from enstune.storage import open_artifacts

    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials must be >= 0, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be a number of seconds > 0, got {timeout}")
    storage = open_storage(storage_url, heartbeat=heartbeat)
    study = _load(name, storage)
    spec = load_spec(study, wait=READY_TIMEOUT)
    executor = Executor(parse_devices(devices))
    beats = optuna.storages.fail_stale_trials if isinstance(storage, optuna.storages.RDBStorage) and heartbeat \
        else None
    todo, running = _open_trials(study, spec)
    todo = todo if n_trials is None else min(n_trials, todo)
    if todo == 0 and not (running and beats):
        return study
    ws = Workspace(spec.task, home_dir(), open_artifacts(artifacts))
    freeze = spec.space.get("freeze")
    ws.preflight(executor.devices[0], spec.finetune, spec.tap, int(max(freeze.choices or (freeze.high,))) if freeze else 0)
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec), pruner=_pruner(spec))
    reporter = reporter_factory(todo) if reporter_factory else Reporter()
    objective = Objective(spec, ws, executor, reporter)
    deadline = None if timeout is None else time.monotonic() + timeout

    def done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reporter.trial_done(trial.state.name, trial.value, _best(study))

    ran = 0
    with reporter, warnings.catch_warnings():
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
                study.optimize(objective, n_trials=1, callbacks=[done], catch=(OverBudget,), gc_after_trial=False)
            except Exception as exc:
                if not _taken_over(exc):
                    raise
                log.warning("a trial of this worker was retried elsewhere after a storage outage; carrying on")
            ran += 1
    return study


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One JSON-serialisable row per trial: number, state, params, value and user attrs."""
    return [
        {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
         "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}, "user_attrs": t.user_attrs}
        for t in study.get_trials(deepcopy=False)
    ]


def show(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """A study's spec, summary and trials."""
    study = _load(name, open_storage(storage_url))
    spec = load_spec(study)
    rows = trial_rows(study)
    best = _best(study)
    return {"name": name, "storage": mask_url(resolve_url(storage_url)), "spec": to_dict(spec),
            "n_trials": len(rows), "budget": budget(spec), "best_value": best, "trials": rows}


def list_studies(storage_url: str | None = None) -> list[dict[str, Any]]:
    """Name, template, trial counts and best value of every study in the storage."""
    out = []
    for s in optuna.get_all_study_summaries(open_storage(storage_url), include_best_trial=True):
        spec = s.user_attrs.get(SPEC_ATTR, {})
        out.append({"name": s.study_name, "template": spec.get("template"), "trials": s.n_trials,
                    "best_value": s.best_trial.value if s.best_trial else None})
    return out


def delete(name: str, storage_url: str | None = None) -> None:
    """Delete study ``name`` and its trials."""
    storage = open_storage(storage_url)
    _load(name, storage)
    optuna.delete_study(study_name=name, storage=storage)
