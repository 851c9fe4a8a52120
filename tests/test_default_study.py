"""The embedded default study, pinned: its trials, their order, its values and its regimes.

The values were measured when the grid's lr_mult axis was widened to reach past the basin's
edge (×1 to ×64); the earlier grid's values had been reproduced to the last bit across the
rebuilds of the recipe, data and backbone seams. Floating-point kernels differ between CPUs: rerun with
MKL and ATen forced to their SSE4.2 kernels, the same code moved single trials by up to 14 of
the 3,480 validation images (0.0040), the mean of the 16 trials by 0.0003 and the best by 0.0006.
The bounds below are several times those shifts; a change that moves the study further must say why.
"""

import pytest

from enstune import study as st
from enstune.worker import run

PINNED = [
    ({"lr_mult": 16, "epoch_mult": 1}, 0.935057),
    ({"lr_mult": 64, "epoch_mult": 1}, 0.925287),
    ({"lr_mult": 4, "epoch_mult": 0.5}, 0.947701),
    ({"lr_mult": 1, "epoch_mult": 0.5}, 0.946552),
    ({"lr_mult": 16, "epoch_mult": 0.5}, 0.929023),
    ({"lr_mult": 1, "epoch_mult": 1}, 0.947414),
    ({"lr_mult": 1, "epoch_mult": 2}, 0.946264),
    ({"lr_mult": 16, "epoch_mult": 2}, 0.924425),
    ({"lr_mult": 64, "epoch_mult": 0.5}, 0.908333),
    ({"lr_mult": 4, "epoch_mult": 2}, 0.943103),
    ({"lr_mult": 16, "epoch_mult": 0.25}, 0.939368),
    ({"lr_mult": 4, "epoch_mult": 0.25}, 0.944540),
    ({"lr_mult": 1, "epoch_mult": 0.25}, 0.939655),
    ({"lr_mult": 4, "epoch_mult": 1}, 0.948851),
    ({"lr_mult": 64, "epoch_mult": 2}, 0.919253),
    ({"lr_mult": 64, "epoch_mult": 0.25}, 0.930460),
]
TRIAL_TOLERANCE = 0.012  # 3x the largest single-trial shift between CPU kernels
MEAN_TOLERANCE = 0.002  # ~7x the shift of the mean
BEST = 0.948851
BEST_TOLERANCE = 0.004  # ~7x the shift of the best


def test_the_default_study_runs_its_pinned_trials_in_order_and_shows_every_regime():
    st.create("starsse-demo")
    study = run("starsse-demo")
    trials = study.get_trials()
    assert [t.params for t in trials] == [params for params, _ in PINNED], "the grid and its order"
    values = [t.value for t in trials]
    assert values == pytest.approx([v for _, v in PINNED], abs=TRIAL_TOLERANCE)
    assert sum(values) / len(values) == pytest.approx(sum(v for _, v in PINNED) / len(PINNED), abs=MEAN_TOLERANCE)
    assert study.best_value == pytest.approx(BEST, abs=BEST_TOLERANCE)
    assert all(t.user_attrs["input_size"] == [1, 8, 8] for t in trials)

    # Every regime, and the semi-local one by the paper's evidence: it left the basin.
    from enstune.publish import study_regimes

    labelled, _ = study_regimes("starsse-demo", None)
    labels = {(g.lr_mult, g.epoch_mult): g for g in labelled}
    assert {g.label for g in labelled} == {"more-local", "optimal", "semi-local"}
    # lr x64: members 2..K lose 0.076 of validation accuracy and the segment from member 1 to member 5
    # dips 0.086 below its line (measured); the thresholds are 0.05.
    far = labels[(64, 1)]
    assert far.label == "semi-local" and far.rule in ("barrier", "degradation"), far
    assert far.barrier > 0.065 and far.degradation > 0.06
