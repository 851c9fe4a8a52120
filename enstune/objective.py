"""A trial's objective: its plan's members trained (or found in the cache), reported step by step, evaluated."""

from __future__ import annotations

import collections
import copy
import math
import os
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from enstune.config import StudySpec
from enstune.errors import DivergedError
from enstune.evaluation import EnsembleCurve, pack_correct
from enstune.evaluation.evaluators import evaluate
from enstune.evaluation.trial import trial_members
from enstune.executor import Executor, Slot
from enstune.members import Workspace
from enstune.methods import TRAINING_MAKERS, MemberJob, MemberResult, get_method, regularize
from enstune.progress import Reporter
from enstune.report import attach_trial_pictures
from enstune.storage.heartbeat import WORKER_ATTR
from enstune.storage.optuna_private import as_asked, is_heartbeat_enabled, storage_of, trial_id
from enstune.study import Census, budget, set_results, trial_config, trial_states


def _work(ws: Workspace, reporter: Reporter, jobs: list[MemberJob]):  # noqa: ANN202
    # Shown as the trial reports them: members 1..K, each step with the member that comes after it.
    size, position, ahead = sum(j.member for j in jobs), {}, 1
    for job in jobs:
        position[job.index] = min(ahead, size)
        ahead += job.member

    def work(job, parent: MemberResult | None, slot: Slot, refs: dict[int, MemberResult],  # noqa: ANN001
             wait: bool) -> MemberResult:
        # Planned epochs where the maker is the training loop; others (a SWAG walk, a sample) report as they go.
        first, last = job.option("span", (0, job.recipe.epochs))
        epochs = last - first if job.make in TRAINING_MAKERS else 0
        reporter.member_started(position[job.index], size, epochs, step="" if job.member else job.make)
        return ws.run(job, parent, slot.device, on_epoch=reporter.epoch_done, refs=refs, wait=wait, train=slot.train)

    return work


class OverBudget(Exception):
    """Other workers spent the study's budget between this worker's check and its new trial."""


def _live(states: collections.Counter[TrialState]) -> int:
    """Trials that count against the budget: all but the failed ones (a failed trial's point is queued again)."""
    return states.total() - states[TrialState.FAIL]


def _admit(trial: optuna.Trial, spec: StudySpec, seen: collections.Counter[TrialState] | None = None) -> dict[str, Any]:
    """This trial's system attributes; a freshly sampled trial beyond the study-wide budget is refused.

    ``seen``: the study's trials by state, counted before this trial was asked for. The trials
    numbered below this one are those and the ones created since, and a failed trial stays failed:
    while even all of them live would leave room in the budget, the trial is admitted uncounted.
    """
    # As Optuna read the trial when it was asked for (it reads the queue's fixed parameters there).
    system = as_asked(trial).system_attrs
    if "fixed_params" not in system and "failed_trial" not in system:  # not queued: sampled here
        if spec.sampler == "grid" and spec.space:  # another worker took the last queued point first
            trial.set_user_attr("over_budget", True)
            raise OverBudget("a grid study runs only its queued points")
        room = budget(spec)
        if seen is None or _live(seen) + trial.number - seen.total() >= room:
            if _live(trial_states(trial.study, below=trial.number)) >= room:
                trial.set_user_attr("over_budget", True)
                raise OverBudget(f"the study's budget of {room} trials is spent")
    return system


def _pruned_value(trial: optuna.Trial) -> float | None:
    """The value Optuna gives a pruned trial: its last intermediate value, unless NaN."""
    values = as_asked(trial).intermediate_values
    last = values[max(values)] if values else None
    return None if last is None or math.isnan(last) else last


class Objective:
    """Trains one trial's ensemble member by member, reporting validation ensemble accuracy."""

    def __init__(self, spec: StudySpec, ws: Workspace, executor: Executor, reporter: Reporter) -> None:
        self.spec, self.ws, self.executor, self.reporter = spec, ws, executor, reporter
        self.trial_id: int | None = None  # the trial this objective runs or ran last
        self.members_done = 0
        self.seen: collections.Counter[TrialState] | None = None  # the study's trials by state, before the next trial
        self.ended: tuple[str, float | None] = ("FAIL", None)  # the last trial's state and value, as Optuna has them
        self.counted: Census | None = None  # the study's census, taken with the last trial's results

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_id, self.members_done, self.ended, self.counted = trial_id(trial), 0, ("FAIL", None), None
        retry = "failed_trial" in _admit(trial, self.spec, self.seen)
        if not is_heartbeat_enabled(storage_of(trial.study)):  # else its first heartbeat names the worker
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        try:
            value = self.run(trial, retry)
        except optuna.TrialPruned:
            self.ended = ("PRUNED", _pruned_value(trial))
            raise
        self.ended = ("COMPLETE", value)
        return value

    def record(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        """Write the trial's result attributes, with the study's census for the worker's next trial in the same trip."""
        self.counted = set_results(trial, attrs)

    @staticmethod
    def _should_prune(trial: optuna.Trial, attrs: dict[str, Any]) -> bool:
        """Ask the pruner, which reads the partial ensemble's evidence from the trial (``enstune.forecast``)."""
        for key in ("val_size", "planned_members", "val_contested"):
            if trial.user_attrs.get(key) != attrs[key]:  # one write per member after the first
                trial.set_user_attr(key, copy.copy(attrs[key]))  # a copy: the list grows member by member
        return trial.should_prune()

    def run(self, trial: optuna.Trial, retry: bool) -> float:
        """The trial's members (a ``retry`` of a failed trial finds its finished ones in the cache) and evaluation."""
        cfg = trial_config(trial, self.spec)
        jobs = regularize(get_method(cfg.method).plan(cfg), cfg)
        size = sum(j.member for j in jobs)
        judged = range(get_method(cfg.method).shared_members + 1, size)  # ensemble sizes the pruner may cut at
        self.reporter.trial_started(trial.number, trial.params, size)
        val, test = EnsembleCurve(self.ws.data.val.y), EnsembleCurve(self.ws.data.test.y)
        epochs: list[int] = []
        results: list[MemberResult] = []
        # What the data says of itself (e.g. how many unreadable images were left out) goes with every trial.
        attrs: dict[str, Any] = {**self.ws.data.attrs, "val_size": len(self.ws.data.val),
                                 "input_size": self.ws.input_size}
        seconds = 0.0
        cached = steps_epochs = 0
        try:
            for job, res in self.executor.run(jobs, _work(self.ws, self.reporter, jobs)):
                seconds += res.seconds
                if not job.member:  # a step the members read: its cost counts, its predictions do not
                    steps_epochs += res.epochs
                    attrs.update({"step_epochs": steps_epochs, "train_seconds": round(seconds, 3)})
                    continue
                val.add(res.val_probs)
                test.add(res.test_probs)
                results.append(res)
                epochs.append(res.epochs)
                cached += res.cached
                self.members_done += 1
                attrs.update({"val_ens_acc": val.ensembles, "test_ens_acc": test.ensembles,
                              "val_member_acc": val.members, "test_member_acc": test.members,
                              "val_contested": val.contested, "planned_members": size,
                              "val_correct": pack_correct(val.probs(), self.ws.data.val.y),
                              "member_epochs": epochs, "train_seconds": round(seconds, 3), "cached_members": cached,
                              "member_keys": [r.key for r in results],
                              "trained_members": [n for n, r in enumerate(results, 1) if not r.cached]})
                step = len(results)  # the ensemble's size so far
                if retry and "resumed_from_member" not in attrs and (not res.cached or step == size):
                    # A retried trial finds its predecessor's finished members in the cache.
                    attrs["resumed_from_member"] = step if not res.cached else step + 1
                trial.report(val.ensembles[-1], step=step)
                self.reporter.member_done(step, val.ensembles[-1], res.cached)
                if step in judged and self.spec.pruner != "none" and self._should_prune(trial, attrs):
                    raise optuna.TrialPruned(f"pruned at ensemble size {step}")
            # Bound to every device of the worker, the evaluators run side by side, one per device.
            members = [trial_members(self.ws, results, device, cfg.seed, self.spec, on_model=self.reporter.weight_model_done)
                       for device in dict.fromkeys(self.executor.devices)]
            attrs.update(evaluate(members, self.spec.evaluate, on_step=self.reporter.evaluating))
            attach_trial_pictures(trial, trial.params, attrs, self.ws.cache.store)
        except DivergedError as exc:
            attrs["diverged"] = True
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        finally:
            # Once per trial, not per member: each write is a database round trip. A trial
            # that dies here loses nothing: its retry reads the members back from the cache.
            self.record(trial, attrs)
        return val.ensembles[-1]
