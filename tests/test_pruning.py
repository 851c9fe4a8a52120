import re

import optuna
import pytest

from enstune.config import StudySpec
from enstune.errors import ConfigError
from enstune.pruning import PRUNERS, SAMPLERS, make_pruner, make_sampler

METHODS = optuna.distributions.CategoricalDistribution(["sse", "starsse", "local_de"])
NEW = ["halving", "hyperband"]


def _study(pruner: str = "median", n_startup: int = 1, name: str = "s") -> optuna.Study:
    spec = StudySpec(template="t", pruner=pruner, prune_startup_trials=n_startup, members=5)
    return optuna.create_study(study_name=name, direction="maximize", pruner=make_pruner(spec))


def _complete(study, method, values):
    fixed = optuna.trial.create_trial(
        params={"method": method}, distributions={"method": METHODS},
        value=values[-1], intermediate_values=dict(enumerate(values, start=1)))
    study.add_trial(fixed)


def _running(study, method, values) -> list[bool]:
    """Report ``values`` at steps 1, 2, … as a trial of ``method`` does; the pruner's answer at each step."""
    study.enqueue_trial({"method": method})
    trial = study.ask({"method": METHODS})
    decisions = []
    for step, v in enumerate(values, start=1):
        trial.report(v, step)
        decisions.append(trial.should_prune())
    return decisions


def _finished(study, method, values) -> None:
    """A trial of ``method`` that reports ``values`` through the pruner (as halving needs) and completes."""
    study.enqueue_trial({"method": method})
    trial = study.ask({"method": METHODS})
    for step, v in enumerate(values, start=1):
        trial.report(v, step)
        trial.should_prune()
    study.tell(trial, values[-1])


def test_shared_first_member_is_never_judged():
    study = _study()
    _complete(study, "sse", [0.9, 0.95, 0.96])
    # far below at step 1 (impossible for a shared member, but it must still not be judged)
    assert _running(study, "sse", [0.1]) == [False]


def test_later_steps_are_judged_against_the_same_method():
    study = _study()
    _complete(study, "sse", [0.9, 0.95, 0.96])
    assert _running(study, "sse", [0.9, 0.5]) == [False, True]


def test_the_shared_member_does_not_rescue_a_trial():
    # Where ensembles fall below member 1 alone, a trial's best value so far would be member 1's, the
    # same for every trial: the median pruner must compare what the trial's own members did.
    study = _study()
    _complete(study, "sse", [0.9, 0.88, 0.89])
    assert _running(study, "sse", [0.9, 0.80]) == [False, True]


def test_other_methods_do_not_count():
    study = _study()
    _complete(study, "local_de", [0.9, 0.95, 0.96])
    # no completed starsse trial yet: startup, nothing to compare with
    assert _running(study, "starsse", [0.9, 0.5]) == [False, False]


def test_methods_without_shared_members_are_judged_from_step_one():
    study = _study()
    _complete(study, "local_de", [0.9, 0.95])
    assert _running(study, "local_de", [0.1]) == [True]


@pytest.mark.parametrize("startup", [2])
def test_startup_counts_only_the_same_method(startup):
    study = _study(n_startup=startup)
    _complete(study, "sse", [0.9, 0.95])
    _complete(study, "starsse", [0.9, 0.95])
    assert _running(study, "sse", [0.9, 0.1]) == [False, False]


@pytest.mark.parametrize("pruner", NEW)
def test_new_pruners_cut_a_worse_trial_of_the_same_method(pruner):
    # The control for the two tests below: the same pruner does cut a trial when its method's trials are better.
    study = _study(pruner)
    for _ in range(4):
        _finished(study, "starsse", [0.9, 0.95, 0.96, 0.97, 0.98])
    assert any(_running(study, "starsse", [0.9, 0.5, 0.5, 0.5]))


@pytest.mark.parametrize("pruner", NEW)
def test_new_pruners_never_judge_shared_steps(pruner):
    study = _study(pruner)
    for _ in range(4):
        _finished(study, "starsse", [0.9, 0.95, 0.96, 0.97, 0.98])
    # six trials: Hyperband spreads them over its brackets, each with its own first rung
    assert [_running(study, "starsse", [0.01]) for _ in range(6)] == [[False]] * 6


@pytest.mark.parametrize("pruner", NEW)
def test_new_pruners_ignore_other_methods(pruner):
    study = _study(pruner)
    for _ in range(4):  # far better sse trials, seen by the pruner at every rung
        _finished(study, "sse", [0.9, 0.95, 0.96, 0.97, 0.98])
    # the first starsse trial has no trial of its own method to lose to
    assert _running(study, "starsse", [0.9, 0.5, 0.5, 0.5]) == [False] * 4


@pytest.mark.parametrize("pruner", NEW)
def test_new_pruners_judge_local_de_from_its_first_member(pruner):
    study = _study(pruner)
    for _ in range(4):
        _finished(study, "local_de", [0.9, 0.95, 0.96, 0.97, 0.98])
    # Hyperband puts some trials in a bracket whose first rung is later: at least one of these is cut at once
    assert any(_running(study, "local_de", [0.1])[0] for _ in range(6))


@pytest.mark.parametrize("kind, make, registry",
                         [("sampler", make_sampler, SAMPLERS), ("pruner", make_pruner, PRUNERS)])
def test_unknown_names_list_the_known_ones(kind, make, registry):
    spec = StudySpec(template="t", **{kind: "nope"})
    with pytest.raises(ConfigError, match=re.escape(f"unknown {kind} 'nope'; known: {', '.join(registry.names())}")):
        make(spec)
    assert {"median", "none", *NEW} <= set(PRUNERS.names()) and {"grid", "random", "tpe", "gp"} <= set(SAMPLERS.names())


@pytest.mark.parametrize("name, kind", [
    ("grid", optuna.samplers.RandomSampler), ("random", optuna.samplers.RandomSampler),
    ("tpe", optuna.samplers.TPESampler), ("gp", optuna.samplers.GPSampler)])
def test_samplers_by_name(name, kind):
    from optuna.distributions import CategoricalDistribution

    from enstune.config import Param

    sampler = make_sampler(StudySpec(template="t", sampler=name, space={"lr_mult": Param(choices=(0.5, 2.0))}))
    assert isinstance(sampler, kind)
    if name != "gp":  # GP's fit takes seconds
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: t.suggest_categorical("lr_mult", [0.5, 2.0]), n_trials=6)
        assert {t.params["lr_mult"] for t in study.trials} == {0.5, 2.0}
        assert isinstance(study.trials[0].distributions["lr_mult"], CategoricalDistribution)


def _bounded(study, method, accs, contested, size=5, n=1000) -> bool:
    """A running trial of ``method`` with the evidence the objective records after ``len(accs)`` members; pruned?

    As in a running trial, the ensemble's accuracies are only its intermediate values.
    """
    study.enqueue_trial({"method": method})
    trial = study.ask({"method": METHODS})
    for key, value in {"val_contested": contested, "val_size": n, "planned_members": size}.items():
        trial.set_user_attr(key, value)
    for step, acc in enumerate(accs, 1):
        trial.report(acc, step)
    return trial.should_prune()


def test_bound_keeps_a_slow_growing_diverse_trial_while_its_bound_reaches_the_best():
    # After 2 of 5 members on 1,000 images: spread = sqrt(contested * (1/2 - 1/5) / 1000), bound = acc + 4.5 spreads.
    study = _study("bound")
    _complete(study, "starsse", [0.93, 0.95, 0.95, 0.95, 0.95])
    # The weakest partial ensemble, but 20% of its images contested: 0.94 + 4.5 * 0.00775 = 0.975 >= 0.95.
    assert _bounded(study, "starsse", [0.93, 0.94], [0.0, 0.2]) is False
    # As weak, with 1% contested: 0.94 + 4.5 * 0.00173 = 0.9478 < 0.95, it cannot reach the best.
    assert _bounded(study, "starsse", [0.93, 0.94], [0.0, 0.01]) is True
    # A better partial ensemble than the median of anything: still cut if it cannot reach the best.
    assert _bounded(study, "starsse", [0.93, 0.9470], [0.0, 0.001]) is True
    assert _bounded(study, "starsse", [0.93, 0.9490], [0.0, 0.001]) is False  # 0.949 + 0.0033 >= 0.95


def test_bound_judges_against_the_pessimistic_bound_of_running_trials_and_its_own_method():
    study = _study("bound")
    assert _bounded(study, "starsse", [0.9, 0.5], [0.0, 0.01]) is False  # nothing to compare with yet
    # A running trial at 0.96 after 4 of 5 members, 1% contested: surely above 0.96 - 4.5 * 0.00071 = 0.9568.
    _bounded(study, "starsse", [0.9, 0.95, 0.96, 0.96], [0.0, 0.01, 0.01, 0.01])
    assert _bounded(study, "starsse", [0.9, 0.95], [0.0, 0.001]) is True  # 0.95 + 0.0033 < 0.9568
    assert _bounded(study, "sse", [0.9, 0.95], [0.0, 0.001]) is False  # another method: nothing to compare with
    assert _bounded(study, "starsse", [0.9], [0.0]) is False  # the shared member alone is never judged


def test_bound_pruner_refuses_a_bad_z():
    from enstune.pruning import EnsembleBoundPruner

    for z in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="z must be"):
            EnsembleBoundPruner(z)
