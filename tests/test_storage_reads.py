"""enstune's storage reads trials as plain rows: each read must equal Optuna's own, field for field."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from enstune.storage import open_storage, trials as reads

INF = float("inf")


def seen(trials: list[optuna.trial.FrozenTrial]) -> str:
    """Every field of each trial, NaN equal to NaN; attributes and steps by key (Optuna's order is the plan's)."""
    return repr([{k: sorted(v.items()) if isinstance(v, dict) and k not in ("_params", "_distributions") else v
                  for k, v in vars(t).items()} for t in trials])


def _fill(study: optuna.Study) -> dict[str, int]:
    """Trials in every state, with infinite and NaN values, each kind of parameter and nested attributes."""
    space = {"lr": FloatDistribution(1e-4, 1.0, log=True), "layers": IntDistribution(1, 9, step=2),
             "method": CategoricalDistribution(["sse", None, True, 0.5]), "mult": FloatDistribution(0, 8, step=0.5)}
    ids = {}
    for n, (state, value, steps) in enumerate([
            (TrialState.COMPLETE, 0.75, {1: 0.5, 2: float("nan"), 3: INF}),
            (TrialState.COMPLETE, INF, {}),
            (TrialState.COMPLETE, -INF, {2: -INF, 1: 0.25}),
            (TrialState.PRUNED, None, {1: 0.1}),
            (TrialState.FAIL, None, {}),
            (TrialState.RUNNING, None, {1: 0.3, 2: 0.31})]):
        trial = study.ask(space)
        for step, v in steps.items():
            trial.report(v, step)
        trial.set_user_attr("results", {"val": [0.5, 0.75], "keys": ["a", "b"], "none": None, "n": n})
        trial.set_user_attr("diverged", n == 4)
        study._storage.set_trial_system_attr(trial._trial_id, "heartbeat", {"pid": n, "host": "h"})
        if state != TrialState.RUNNING:
            study.tell(trial, value, state=state)
        ids[state.name + str(n)] = trial._trial_id
    study.enqueue_trial({"lr": 0.01, "layers": 3, "method": None, "mult": 2.5})
    return ids


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_trials_read_as_rows_equal_optunas_for_every_filter_and_chunking(kind, pg, tmp_path, monkeypatch):
    url = pg.url() if kind == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name=f"reads-{kind}", storage=storage)
    optuna.create_study(study_name=f"other-{kind}", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 2)
    ids = _fill(study)
    both = optuna.create_study(study_name=f"two-{kind}", storage=storage, directions=["maximize", "minimize"])
    both.tell(both.ask({"x": FloatDistribution(0, 1)}), [INF, 0.5])
    backend = study._storage._backend
    sid, two = study._study_id, both._study_id
    unfinished, last = {ids["RUNNING5"]}, ids["PRUNED3"]
    calls = [(sid, None, set(), -1), (sid, (TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
             (sid, None, unfinished, last), (sid, None, set(), last), (sid, (TrialState.WAITING,), set(), -1),
             (sid, None, {ids["COMPLETE0"], ids["RUNNING5"]}, ids["COMPLETE1"]),
             (sid, None, {ids["COMPLETE1"], ids["PRUNED3"]}, ids["FAIL4"]), (two, None, set(), -1)]
    for chunk in (reads.CHUNK, 1):  # 1: each IN list one id, and unfinished ids past a chunk go as a range
        monkeypatch.setattr(reads, "CHUNK", chunk)
        for call in calls:
            ours, theirs = backend._get_trials(*call), RDBStorage._get_trials(backend, *call)
            assert ours and seen(ours) == seen(theirs), call
    assert [t.state for t in backend._get_trials(sid, None, set(), -1)] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
        TrialState.RUNNING, TrialState.WAITING]
    for trial_id in [*ids.values(), both.trials[0]._trial_id]:
        assert seen([backend.get_trial(trial_id)]) == seen([RDBStorage.get_trial(backend, trial_id)])
    with pytest.raises(KeyError, match="Record does not exist"):
        backend.get_trial(max(ids.values()) + 1000)
    with pytest.raises(KeyError):
        backend._get_trials(sid + 1000, None, set(), -1)
    # Through Optuna's own client: the study as a plain Optuna user loads it.
    assert seen(optuna.load_study(study_name=f"reads-{kind}", storage=url).trials) == seen(study.trials)
