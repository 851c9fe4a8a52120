import pytest
import torch

from enstune.evaluation import EnsembleCurve, accuracy


def test_accuracy_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(probs, torch.tensor([0, 1, 1, 1])) == 0.75


def test_accuracy_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_ensemble_averages_probabilities_not_votes():
    labels = torch.tensor([0, 0, 1])
    a = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])  # right, wrong, right -> 2/3
    b = torch.tensor([[0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])  # wrong, right, wrong -> 1/3
    c = torch.tensor([[0.45, 0.55], [0.45, 0.55], [0.9, 0.1]])  # wrong, wrong, wrong -> 0
    curve = EnsembleCurve(labels)
    # mean(a, b) = [[.65,.35],[.55,.45],[.525,.475]] -> right, right, wrong
    assert curve.add(a) == pytest.approx(2 / 3)
    assert curve.add(b) == pytest.approx(2 / 3)
    # mean(a, b, c) = [[.583,.417],[.517,.483],[.65,.35]] -> right, right, wrong
    assert curve.add(c) == pytest.approx(2 / 3)
    assert curve.members == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert len(curve.ensembles) == 3


def test_ensemble_can_beat_every_member():
    labels = torch.tensor([0, 1])
    a = torch.tensor([[0.9, 0.1], [0.55, 0.45]])
    b = torch.tensor([[0.45, 0.55], [0.1, 0.9]])
    curve = EnsembleCurve(labels)
    curve.add(a)
    assert curve.add(b) == 1.0 and curve.members == [0.5, 0.5]
