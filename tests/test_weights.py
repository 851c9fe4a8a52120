"""Calibration, diversity, soups, segments, barriers and joint connectivity, against values by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enstune.data._base import TensorSplit
from enstune.evaluation import accuracy
from enstune.evaluation.metrics import diversity, ece, nll
from enstune.evaluation.weights import WeightSpace, barrier, mix, recalibrate_bn
from enstune.training import predict


def test_nll_by_hand():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert nll(probs, torch.tensor([0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right); bins of width 0.1
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1, 0])
    # bin (0.8, 0.9]: acc 0.5, conf 0.9 -> |gap| 0.4 * 2/4; bin (0.5, 0.6]: acc 1, conf 0.6 -> 0.4 * 2/4
    assert ece(probs, labels, bins=10) == pytest.approx(0.4)
    assert ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def _onehot(preds: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(preds), 3).float()


def test_diversity_is_disagreement_over_the_larger_error():
    labels = torch.tensor([0, 1, 2, 0])
    a = _onehot([0, 1, 2, 1])  # error 1/4
    b = _onehot([0, 1, 1, 1])  # error 2/4, disagrees with a on 1/4
    c = _onehot([0, 1, 2, 0])  # error 0, disagrees with a on 1/4, with b on 2/4
    expected = 100 * ((0.25 / 0.5) + (0.25 / 0.25) + (0.5 / 0.5)) / 3
    assert diversity([a, b, c], labels) == pytest.approx(expected)
    assert diversity([c, c], labels) == 0.0, "two perfect identical members: 0, not 0/0"
    assert diversity([a], labels) == 0.0


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def test_a_soup_of_identical_models_is_the_model():
    net = _bn_net(0)
    state = net.state_dict()
    soup = mix([state, state, state], [0.2, 0.3, 0.5])
    assert all(torch.allclose(soup[k].float(), state[k].float()) for k in state)
    twin = _bn_net(1)
    twin.load_state_dict(soup)
    x = TensorSplit(torch.randn(50, 2), torch.zeros(50, dtype=torch.long))
    assert torch.allclose(predict(twin, x), predict(net, x))


def test_bn_recalibration_recomputes_running_statistics():
    bn = nn.BatchNorm1d(3)
    x = torch.randn(64, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])
    recalibrate_bn(bn, [x[:32], x[32:]])
    # update_bn averages the batch statistics over the pass (momentum None)
    mean = (x[:32].mean(0) + x[32:].mean(0)) / 2
    var = (x[:32].var(0) + x[32:].var(0)) / 2
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-5)
    assert bn.training, "update_bn restores the module's mode"


def test_barrier_is_the_largest_drop_below_the_line():
    assert barrier([0.8, 0.7, 0.9]) == pytest.approx(0.15)
    assert barrier([0.9, 0.95, 0.8]) == 0.0
    assert barrier([0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.0, abs=1e-12)


def _xor() -> TensorSplit:
    # Quadrants with alternating labels: no linear model gets them, so accuracy needs the hidden units.
    x = torch.rand(400, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return TensorSplit(x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long())


def _trained(data: TensorSplit, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(data.x), data.y).backward()
        opt.step()
    return net


def _space() -> WeightSpace:
    def build(state):
        net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        net.load_state_dict(state)
        return net

    return WeightSpace(build, lambda: [])


def test_joint_connectivity_is_zero_for_one_basin_and_negative_across_permutations():
    data = _xor()
    net = _trained(data, 0)
    space = _space()
    a = net.state_dict()
    assert accuracy(predict(net, data), data.y) > 0.9
    near = {k: v + 1e-3 * torch.randn_like(v) for k, v in a.items()}
    assert abs(space.joint_connectivity([a, near], data, samples=20)) < 1.0

    # The same function with its hidden units permuted: equally accurate, in another basin
    # of weight space (its weight average is a different network), and mixtures of the two
    # fall below the line.
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    permuted = {"0.weight": a["0.weight"][perm], "0.bias": a["0.bias"][perm],
                "2.weight": a["2.weight"][:, perm], "2.bias": a["2.bias"]}
    assert space.accuracy([permuted], [1.0], data) == pytest.approx(space.accuracy([a], [1.0], data))
    other = _trained(data, 1).state_dict()
    q_perm = space.joint_connectivity([a, permuted], data, samples=20)
    assert q_perm < -1.0, q_perm
    assert space.joint_connectivity([a, other, permuted], data, samples=20) < -1.0


def test_segment_and_greedy_soup_choose_on_validation():
    data = _xor()
    good = _trained(data, 0).state_dict()
    # a "member" that predicts the opposite class: adding it can only hurt
    bad = {k: v.clone() for k, v in good.items()}
    bad["2.weight"], bad["2.bias"] = -bad["2.weight"], -bad["2.bias"]
    space = _space()
    (accs,) = space.segment(good, bad, [data], points=5)
    assert len(accs) == 5 and accs[0] > 0.9 and accs[-1] < 0.1
    chosen, val_acc = space.greedy_soup([bad, good], [0.05, 0.95], data)
    assert chosen == [1] and val_acc == pytest.approx(accs[0])


def test_evaluators_side_by_side_on_two_bindings_give_what_one_gives():
    from enstune.evaluation.evaluators import Members, evaluate

    data = _xor()
    states = [_trained(data, s).state_dict() for s in (0, 1, 2)]
    seen: list[str] = []

    def members() -> Members:
        probs = [predict(_space().build(s), data) for s in states]
        return Members(states, probs, probs, data, data, data, _space(), seed=0, interp_points=5, curve_images=400)

    names = ["calibration", "diversity", "soups", "connectivity"]
    alone = evaluate(members(), names)
    together = evaluate([members(), members()], names, on_step=lambda name, i, n: seen.append(name))
    assert together == alone and list(together) == list(alone)
    assert sorted(seen) == sorted(names)
    assert {"test_ece", "diversity", "soup_val_acc", "barrier_val", "joint_connectivity"} <= set(alone)
