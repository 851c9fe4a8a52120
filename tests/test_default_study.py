"""The embedded default study, pinned: its trials, their order and its values.

The values were measured on the code before the recipe, data and backbone seams were rebuilt
(and reproduced to the last bit after). Floating-point kernels differ between CPUs: rerun with
MKL and ATen forced to their SSE4.2 kernels, the same code moved single trials by up to 14 of
the 3,480 validation images (0.0040), the mean of the 16 trials by 0.0003 and the best by 0.0006.
The bounds below are several times those shifts; a change that moves the study further must say why.
"""

import pytest

from enstune import study as st
from enstune.worker import run

PINNED = [
    ({"lr_mult": 2, "epoch_mult": 1}, 0.948851),
    ({"lr_mult": 4, "epoch_mult": 1}, 0.948851),
    ({"lr_mult": 0.5, "epoch_mult": 0.5}, 0.945977),
    ({"lr_mult": 0.25, "epoch_mult": 0.5}, 0.943678),
    ({"lr_mult": 2, "epoch_mult": 0.5}, 0.945690),
    ({"lr_mult": 0.25, "epoch_mult": 1}, 0.939368),
    ({"lr_mult": 0.25, "epoch_mult": 2}, 0.942816),
    ({"lr_mult": 2, "epoch_mult": 2}, 0.947414),
    ({"lr_mult": 4, "epoch_mult": 0.5}, 0.947701),
    ({"lr_mult": 0.5, "epoch_mult": 2}, 0.944828),
    ({"lr_mult": 2, "epoch_mult": 0.25}, 0.941954),
    ({"lr_mult": 0.5, "epoch_mult": 0.25}, 0.940230),
    ({"lr_mult": 0.25, "epoch_mult": 0.25}, 0.937069),
    ({"lr_mult": 0.5, "epoch_mult": 1}, 0.940805),
    ({"lr_mult": 4, "epoch_mult": 2}, 0.943103),
    ({"lr_mult": 4, "epoch_mult": 0.25}, 0.944540),
]
TRIAL_TOLERANCE = 0.012  # 3x the largest single-trial shift between CPU kernels
MEAN_TOLERANCE = 0.002  # ~7x the shift of the mean
BEST = 0.948851
BEST_TOLERANCE = 0.004  # ~7x the shift of the best


def test_the_default_study_runs_its_pinned_trials_in_order():
    st.create("starsse-demo")
    study = run("starsse-demo")
    trials = study.get_trials()
    assert [t.params for t in trials] == [params for params, _ in PINNED], "the grid and its order"
    values = [t.value for t in trials]
    assert values == pytest.approx([v for _, v in PINNED], abs=TRIAL_TOLERANCE)
    assert sum(values) / len(values) == pytest.approx(sum(v for _, v in PINNED) / len(PINNED), abs=MEAN_TOLERANCE)
    assert study.best_value == pytest.approx(BEST, abs=BEST_TOLERANCE)
    assert all(t.user_attrs["input_size"] == [1, 8, 8] for t in trials)
