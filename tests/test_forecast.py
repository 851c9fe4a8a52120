"""Bounds of a partial ensemble by hand, and the contested share of its images."""

import math

import pytest
import torch

from enstune.evaluation import EnsembleCurve
from enstune.forecast import Z, bounds, spread, trial_bounds


def test_spread_by_hand():
    assert spread(0.3, 1000, 2, 5) == pytest.approx(math.sqrt(0.3 * (1 / 2 - 1 / 5) / 1000))
    assert spread(0.3, 1000, 5, 5) == 0.0  # a finished ensemble: nothing left to gain or lose
    assert spread(0.0, 1000, 2, 5) == 0.0  # nothing contested
    with pytest.raises(ValueError):
        spread(0.3, 0, 2, 5)


def test_bounds_are_clipped_to_accuracies():
    b = bounds(0.99, 1.0, 10, 2, 5, z=Z)
    assert b.upper == 1.0 and b.lower == pytest.approx(0.99 - Z * math.sqrt(0.3 / 10)) and b.accuracy == 0.99
    assert bounds(0.01, 1.0, 10, 2, 5).lower == 0.0


def test_trial_bounds_need_two_members_and_the_recorded_evidence():
    attrs = {"val_ens_acc": [0.9, 0.92], "val_contested": [0.0, 0.1], "val_size": 400, "planned_members": 4}
    b = trial_bounds(attrs)
    assert (b.members, b.size) == (2, 4)
    assert b.upper == pytest.approx(0.92 + Z * math.sqrt(0.1 * (1 / 2 - 1 / 4) / 400))
    assert trial_bounds({**attrs, "val_ens_acc": [0.9], "val_contested": [0.0]}) is None  # one member
    assert trial_bounds({k: v for k, v in attrs.items() if k != "val_contested"}) is None
    assert trial_bounds({**attrs, "val_contested": [0.1]}) is None  # not one entry per member


def test_contested_images_are_those_the_members_scatter_could_flip():
    labels = torch.tensor([0, 0, 0])
    curve = EnsembleCurve(labels)
    curve.add(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]]))
    assert curve.contested == [0.0]  # one member scatters nowhere
    curve.add(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]]))
    # Image 1: agreement, no scatter. Image 2: mean (0.5, 0.5), margin 0 < 2 * sd. Image 3: mean
    # (0.475, 0.525), margin 0.05; sd of (0.5, 0.45) is 0.0354, 2 sd = 0.071 > 0.05: contested.
    assert curve.contested[-1] == pytest.approx(2 / 3)
    curve.add(torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.5, 0.5]]))
    # Image 1 now: mean (0.633, 0.367), margin 0.267; sd of (0.9, 0.9, 0.1) = 0.462: contested too.
    assert curve.contested[-1] == pytest.approx(1.0)
    assert curve.ensembles == pytest.approx([1.0, 2 / 3, 2 / 3])  # a tie goes to the first class
