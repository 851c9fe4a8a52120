"""A trial's objective: its plan's members trained (or found in the cache), reported step by step, evaluated."""

from __future__ import annotations

import os
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from enstune.config import StudySpec
from enstune.errors import DivergedError
from enstune.evaluation import EnsembleCurve, pack_correct
from enstune.evaluation.evaluators import evaluate
from enstune.executor import Executor, Slot
from enstune.members import MemberResult, Workspace
from enstune.methods import get_method, regularize
from enstune.progress import Reporter
from enstune.report import attach_trial_pictures
from enstune.study import _database, budget, set_user_attrs, trial_config, trial_states


def _work(ws: Workspace, reporter: Reporter, members: int):  # noqa: ANN202
    def work(job, parent: MemberResult | None, slot: Slot, refs: dict[int, MemberResult],  # noqa: ANN001
             wait: bool) -> MemberResult:
        reporter.member_started(job.index, members, job.recipe.epochs)
        return ws.run(job, parent, slot.device, on_epoch=reporter.epoch_done, refs=refs, wait=wait, train=slot.train)

    return work


class OverBudget(Exception):
    """Other workers spent the study's budget between this worker's check and its new trial."""


def _admit(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """This trial's system attributes; a freshly sampled trial beyond the study-wide budget is refused."""
    # The database's attribute table alone: Optuna's cache would read the whole trial for it.
    system = (_database(trial.study) or trial.study._storage).get_trial_system_attrs(trial._trial_id)
    if "fixed_params" not in system and "failed_trial" not in system:  # not queued: sampled here
        if spec.sampler == "grid" and spec.space:  # another worker took the last queued point first
            trial.set_user_attr("over_budget", True)
            raise OverBudget("a grid study runs only its queued points")
        states = trial_states(trial.study, below=trial.number)
        if states.total() - states[TrialState.FAIL] >= budget(spec):
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"the study's budget of {budget(spec)} trials is spent")
    return system


class Objective:
    """Trains one trial's ensemble member by member, reporting validation ensemble accuracy."""

    def __init__(self, spec: StudySpec, ws: Workspace, executor: Executor, reporter: Reporter) -> None:
        self.spec, self.ws, self.executor, self.reporter = spec, ws, executor, reporter
        self.trial_id: int | None = None  # the trial this objective runs or ran last
        self.members_done = 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_id, self.members_done = trial._trial_id, 0
        retry = "failed_trial" in _admit(trial, self.spec)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        cfg = trial_config(trial, self.spec)
        jobs = regularize(get_method(cfg.method).plan(cfg), cfg)
        size = sum(j.member for j in jobs)
        judged = range(get_method(cfg.method).shared_members + 1, size)  # ensemble sizes the pruner may cut at
        self.reporter.trial_started(trial.number, trial.params, size)
        val, test = EnsembleCurve(self.ws.data.val.y), EnsembleCurve(self.ws.data.test.y)
        epochs: list[int] = []
        results: list[MemberResult] = []
        attrs: dict[str, Any] = {"val_size": len(self.ws.data.val), "input_size": self.ws.input_size}
        seconds = 0.0
        cached = steps_epochs = 0
        try:
            for job, res in self.executor.run(jobs, _work(self.ws, self.reporter, len(jobs))):
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
                              "member_epochs": epochs, "train_seconds": round(seconds, 3), "cached_members": cached,
                              "member_keys": [r.key for r in results],
                              "trained_members": [n for n, r in enumerate(results, 1) if not r.cached]})
                step = len(results)  # the ensemble's size so far
                if retry and "resumed_from_member" not in attrs and (not res.cached or step == size):
                    # A retried trial finds its predecessor's finished members in the cache.
                    attrs["resumed_from_member"] = step if not res.cached else step + 1
                trial.report(val.ensembles[-1], step=step)
                self.reporter.member_done(step, val.ensembles[-1], res.cached)
                if step in judged and self.spec.pruner != "none" and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at ensemble size {step}")
            attrs["val_correct"] = pack_correct(val.probs(), self.ws.data.val.y)
            members = self.ws.evaluation(results, self.executor.devices[0], cfg.seed, self.spec,
                                         on_model=self.reporter.weight_model_done)
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
