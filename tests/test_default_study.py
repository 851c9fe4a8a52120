"""The embedded default study: its grid and order, what its pruner cuts, and the regimes it shows.

Floating-point kernels differ between CPUs, and at lr×64 training is chaotic: one trial's value
moved by up to 0.01 between ATen's native, AVX2 and default kernels and one or two threads
(measured). So this pins what the study shows, with margins measured across those four settings,
not one CPU's digits:

    setting        best (setting)          completed  lr×64 after member 2   lr×64 degradation
    native (AVX-512) 0.9497 (lr×4/ep×0.5)  7          0.913-0.923            0.072-0.122
    avx2             0.9483 (lr×4/ep×1)    8          0.916-0.925            0.073-0.131
    default          0.9526 (lr×4/ep×1)    6          0.914-0.927            0.083-0.107
    native, 1 thread   as native, to the last digit
"""

import pytest

from enstune import study as st
from enstune.worker import run

# Cheapest first (the epochs of each point's plan), the grid's seeded shuffle among equals.
ORDER = [(16, 0.25), (4, 0.25), (1, 0.25), (64, 0.25), (4, 0.5), (1, 0.5), (16, 0.5), (64, 0.5),
         (16, 1), (64, 1), (1, 1), (4, 1), (1, 2), (16, 2), (4, 2), (64, 2)]


@pytest.mark.slow
def test_the_default_study_cuts_past_the_basin_and_labels_every_setting():
    st.create("starsse-demo")
    study = run("starsse-demo")
    trials = study.get_trials()
    assert [(t.params["lr_mult"], t.params["epoch_mult"]) for t in trials] == ORDER, "the grid and its order"
    assert all(t.user_attrs["input_size"] == [1, 8, 8] for t in trials)
    by = {(t.params["lr_mult"], t.params["epoch_mult"]): t for t in trials}

    # The best is a setting inside the basin (lr x1 or x4), 0.948-0.953 on every setting measured.
    best = study.best_trial
    assert best.params["lr_mult"] in (1, 4) and 0.94 < study.best_value < 0.96
    # The first trial has nothing to be judged against; past the basin (lr x64) every trial is cut
    # after its second member: its ensemble there is at most 0.927 against a best of at least 0.945
    # by then, far outside what its contested images allow.
    assert by[(16, 0.25)].state.name == "COMPLETE"
    assert all(by[(64, ep)].state.name == "PRUNED" and len(by[(64, ep)].intermediate_values) == 2
               for ep in (0.25, 0.5, 1, 2))
    assert 5 <= sum(t.state.name == "COMPLETE" for t in trials) <= 10

    # Every setting is labelled (pruned ones from their evidence, marked partial), and the map
    # shows all three regimes; lr x64 is semi-local by the paper's evidence: its members fall more
    # than 0.07 below member 1 on every setting measured (threshold 0.05).
    from enstune.publish import study_regimes

    labelled, _ = study_regimes("starsse-demo", None)
    labels = {(g.lr_mult, g.epoch_mult): g for g in labelled}
    assert set(labels) == set(ORDER)
    assert {g.label for g in labelled} == {"more-local", "optimal", "semi-local"}
    assert labels[(best.params["lr_mult"], best.params["epoch_mult"])].label == "optimal"
    for ep in (0.25, 0.5, 1, 2):
        far = labels[(64, ep)]
        assert far.partial and far.label == "semi-local" and far.rule == "degradation" and far.degradation > 0.06, far
    assert all(g.partial == (by[(g.lr_mult, g.epoch_mult)].state.name == "PRUNED") for g in labelled)
    assert all(0 <= g.confidence <= 1 for g in labelled)
