import optuna
import pytest

from enstune.pruning import MethodAwarePruner

METHODS = optuna.distributions.CategoricalDistribution(["sse", "starsse", "local_de"])


def _study(n_startup: int = 1) -> optuna.Study:
    inner = optuna.pruners.MedianPruner(n_startup_trials=n_startup, n_warmup_steps=0)
    return optuna.create_study(direction="maximize", pruner=MethodAwarePruner(inner, "starsse"))


def _complete(study, method, values):
    fixed = optuna.trial.create_trial(
        params={"method": method}, distributions={"method": METHODS},
        value=values[-1], intermediate_values=dict(enumerate(values, start=1)))
    study.add_trial(fixed)


def _running(study, method, values) -> bool:
    study.enqueue_trial({"method": method})
    trial = study.ask({"method": METHODS})
    decisions = []
    for step, v in enumerate(values, start=1):
        trial.report(v, step)
        decisions.append(trial.should_prune())
    return decisions


def test_shared_first_member_is_never_judged():
    study = _study()
    _complete(study, "sse", [0.9, 0.95, 0.96])
    # far below at step 1 (impossible for a shared member, but it must still not be judged)
    assert _running(study, "sse", [0.1]) == [False]


def test_later_steps_are_judged_against_the_same_method():
    study = _study()
    _complete(study, "sse", [0.9, 0.95, 0.96])
    assert _running(study, "sse", [0.9, 0.5]) == [False, True]


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
    study = _study(startup)
    _complete(study, "sse", [0.9, 0.95])
    _complete(study, "starsse", [0.9, 0.95])
    assert _running(study, "sse", [0.9, 0.1]) == [False, False]
