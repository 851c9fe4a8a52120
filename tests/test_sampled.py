"""Members sampled around a trained one: SWAG's moments and draws, KFAC factors and Laplace draws, both end to end."""

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import enstune.methods.laplace  # noqa: F401  (registration)
import enstune.methods.swag  # noqa: F401  (registration)
from conftest import with_pretrained
from enstune import study as st
from enstune.checks import load_checked
from enstune.config import TrialConfig
from enstune.members import Workspace
from enstune.methods import get_method
from enstune.methods._base import BN_IMAGES
from enstune.methods.laplace import _grad_rows, _input_rows, damping_of, kfac_factors, laplace_sample
from enstune.methods.swag import Moments, flat_weights, swag_sample

CPU = torch.device("cpu")


def test_moments_of_a_hand_made_sequence():
    iterates = [torch.tensor([1.0, 2.0, -1.0]), torch.tensor([3.0, 2.0, 0.0]), torch.tensor([2.0, 5.0, 1.0]),
                torch.tensor([0.0, 3.0, 4.0])]
    moments = Moments(rank=2)
    for theta in iterates:
        moments.add(theta)
    m = moments.extras()
    mean = torch.tensor([1.5, 3.0, 1.0], dtype=torch.float64)
    assert torch.equal(m["mean"], mean) and int(m["count"]) == 4
    assert torch.allclose(m["sq_mean"], torch.tensor([3.5, 10.5, 4.5], dtype=torch.float64))
    assert torch.allclose(m["sq_mean"] - m["mean"] ** 2, torch.tensor([1.25, 1.5, 3.5], dtype=torch.float64))
    # the last two iterates, from the mean of all four
    assert torch.allclose(m["deviations"], torch.tensor([[0.5, 2.0, 0.0], [-1.5, 0.0, 3.0]]))


def test_tiny_variances_survive_large_weights():
    moments = Moments()
    for step in range(10):
        moments.add(torch.full((4,), 100.0) + 1e-4 * step)  # float32 would lose the spread to cancellation
    m = moments.extras()
    variance = (m["sq_mean"] - m["mean"] ** 2).float()
    assert torch.allclose(variance, torch.full((4,), 8.25e-8), rtol=1e-3)


def test_swag_draws_have_the_diagonal_plus_low_rank_covariance():
    g = torch.Generator().manual_seed(0)
    moments = Moments(rank=4)
    for _ in range(9):
        moments.add(torch.randn(5, generator=g) * torch.tensor([1.0, 0.5, 2.0, 0.1, 1.0]))
    m = moments.extras()
    scale = 0.5
    d = m["deviations"].double()
    expected = scale * (torch.diag(m["sq_mean"] - m["mean"] ** 2) + d.T @ d / (len(d) - 1))
    draws = torch.stack([swag_sample(m, scale, g) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), m["mean"], atol=0.06)
    assert (draws.T.cov() - expected).abs().max() < 0.1 * expected.abs().max()
    assert torch.equal(swag_sample(m, 0.0, g), m["mean"]), "scale 0 is the mean"
    same = [swag_sample(m, scale, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*same) and not torch.equal(same[0], swag_sample(m, scale, torch.Generator().manual_seed(4)))


def _fisher(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The exact Fisher of one input (1 × fan-in) for [W | b] (row-major), every label weighted by its probability."""
    params = {"weight": layer.weight.detach(), "bias": layer.bias.detach()}

    def log_probs(p):
        return F.log_softmax(torch.func.functional_call(layer, p, (x,)), -1)

    jac = torch.func.jacrev(log_probs)(params)  # d log p_c / d params, for the one input
    j = torch.cat([jac["weight"], jac["bias"].unsqueeze(-1)], dim=-1).reshape(layer.out_features, -1)
    p = log_probs(params).exp()[0]
    return j.T @ torch.diag(p) @ j


def _repeat(x: torch.Tensor, times: int, batch: int = 10000):
    rows = x.repeat(times, 1)
    return [(rows[i:i + batch], None) for i in range(0, len(rows), batch)]


def test_kfac_factors_of_a_linear_layer_are_the_fishers():
    torch.manual_seed(0)
    layer = nn.Linear(3, 4)
    nn.init.normal_(layer.weight, std=0.5)  # p = (0.07, 0.76, 0.07, 0.09): H far from a multiple of the identity
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    f = kfac_factors(layer, _repeat(x, 20000), g)
    assert int(f["examples"]) == 20000
    a = torch.cat([x[0], torch.ones(1)])
    assert torch.allclose(f["Q/"], torch.outer(a, a), atol=1e-4)
    exact = _fisher(layer, x)  # for one input, KFAC's factorisation is exact: F = H ⊗ Q
    assert (torch.kron(f["H/"], f["Q/"]) - exact).abs().max() < 0.08 * exact.abs().max()
    # Several inputs: Q is their mean outer product, H the mean of the output Hessians (the bias block).
    xs = torch.randn(5, 3, generator=g)
    f = kfac_factors(layer, _repeat(xs, 4000), g)
    a = torch.cat([xs, torch.ones(5, 1)], dim=1)
    assert torch.allclose(f["Q/"], a.T @ a / 5, atol=1e-4)  # float32 sums of 20,000 rows
    bias_block = torch.stack([_fisher(layer, xs[i:i + 1])[3::4, 3::4] for i in range(5)]).mean(0)
    assert (f["H/"] - bias_block).abs().max() < 0.08 * bias_block.abs().max()


def test_a_convolutions_rows_give_its_weight_gradient():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=2, stride=1, padding=1)
    x = torch.randn(4, 2, 3, 3)
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    a, positions = _input_rows(conv, x)
    g = _grad_rows(conv, grad)
    assert positions == 16 and a.shape == (4 * 16, 2 * 2 * 2 + 1)
    w = g.T @ a  # sum over examples and positions of g aᵀ: [weight | bias] gradient in the weight's layout
    assert torch.allclose(w[:, :-1].reshape(conv.weight.shape), conv.weight.grad, atol=1e-5)
    assert torch.allclose(w[:, -1], conv.bias.grad, atol=1e-5)


def _pooled_conv() -> nn.Module:
    """A 1×1 convolution (1 → 2 channels, bias) of zero weights, averaged over its 4 positions into 2 logits."""
    conv = nn.Conv2d(1, 2, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_a_convolutions_factors_are_averaged_over_positions_as_the_swag_repositorys():
    # Zero weights: both classes at p = 0.5, so whichever label is drawn, the gradient at each of the 4
    # output positions is ±(0.5, -0.5) / 4 (the pooling's share): g gᵀ = [[1, -1], [-1, 1]] / 64 at every one.
    model = _pooled_conv()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    f = kfac_factors(model, [(x, None), (x, None)], torch.Generator().manual_seed(0))
    assert int(f["examples"]) == 2 and int(f["positions/0"]) == 4
    # KFACLaplace._compute_covs: ggt = Σ g gᵀ / (examples × positions), not summed over the positions (1/16).
    assert torch.allclose(f["H/0"], torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) / 64)
    # xxt likewise: the patches [x, 1] averaged over positions, (1 + 4 + 9 + 16) / 4 = 7.5, (1+2+3+4) / 4 = 2.5.
    assert torch.allclose(f["Q/0"], torch.tensor([[7.5, 2.5], [2.5, 1.0]]))


def test_a_convolutions_damping_is_the_prior_over_its_positions():
    # KFACLaplace._inv_covs: eps / num_locations, its square root on both diagonals.
    assert damping_of(0.04, 4) == pytest.approx(0.1) and damping_of(0.04, 1) == pytest.approx(0.2)
    # Factors h·I and q·I: the draw is (scale/N) Z / √((h + δ)(q + δ)), Z the generator's first normals.
    h, q, scale, examples = 0.3, 0.5, 2.0, 10
    model = _pooled_conv()
    factors = {"Q/0": q * torch.eye(2), "H/0": h * torch.eye(2), "positions/0": torch.tensor(4),
               "examples": torch.tensor(examples)}
    laplace_sample(model, factors, scale, 0.04, torch.Generator().manual_seed(0))
    z = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = scale / examples * z / ((h + 0.1) * (q + 0.1)) ** 0.5  # δ = 0.1, not √0.04 = 0.2
    got = torch.cat([model[0].weight.detach().view(2, 1), model[0].bias.detach().view(2, 1)], 1).double()
    assert torch.allclose(got, expected, atol=1e-6)


def _draw(factors: dict, shape: tuple[int, int], scale: float, prior: float) -> torch.Tensor:
    """One Laplace draw for a Linear layer of ``shape`` (out, in) from zero weights: [W | b]."""
    layer = nn.Linear(shape[1], shape[0])
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    laplace_sample(layer, factors | {"examples": torch.tensor(10)}, scale, prior, torch.Generator().manual_seed(0))
    return torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1).double()


def test_laplace_draws_have_the_kronecker_covariance():
    # (scale/N)² (H + δI)⁻¹ ⊗ (Q + δI)⁻¹, checked a side at a time: with the other factor c·I, the rows
    # (or the columns) of one wide draw are independent samples of the first side's covariance.
    g = torch.Generator().manual_seed(0)
    scale, prior, c, wide = 2.0, 0.04, 0.3, 1500
    side = torch.randn(3, 3, generator=g)
    side = side @ side.T
    eye = torch.eye(3, dtype=torch.float64)
    rows = _draw({"Q/": side, "H/": c * torch.eye(wide)}, (wide, 2), scale, prior)  # in 2 + bias = 3 columns
    expected = (scale / 10) ** 2 / (c + prior ** 0.5) * torch.linalg.inv(side.double() + prior ** 0.5 * eye)
    assert (rows.T.cov() - expected).abs().max() < 0.15 * expected.abs().max()
    cols = _draw({"Q/": c * torch.eye(wide), "H/": side}, (3, wide - 1), scale, prior)
    assert (cols.cov() - expected).abs().max() < 0.15 * expected.abs().max()
    assert rows.abs().max() > 0 and torch.equal(_draw({"Q/": side, "H/": c * torch.eye(wide)}, (wide, 2), 0.0, prior),
                                                 torch.zeros(wide, 3, dtype=torch.float64)), "scale 0: the mean"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, pretrained):
    """One demo workspace for both trials: member 1 is trained once."""
    from enstune.storage import open_artifacts

    root = with_pretrained(tmp_path_factory.mktemp("sampled"), pretrained)
    return Workspace(load_checked("swag-demo").task, root, artifacts=open_artifacts(str(root / "artifacts")))


def _run(ws: Workspace, jobs):
    done = {}
    for job in jobs:
        done[job.index] = ws.run(job, done.get(job.parent), CPU, refs={i: done[i] for i in job.refs})
    return done


def _accuracy(probs: torch.Tensor, ws: Workspace) -> float:
    return (probs.argmax(1) == ws.data.val.y).float().mean().item()


def _bn(state):
    return torch.cat([v.flatten() for k, v in state.items() if k.endswith("running_mean")])


def test_a_swag_trial_on_the_demo_task(ws):
    spec = load_checked("swag-demo", ["members=3", "finetune.epochs=10", "space.epoch_mult.choices=[0.5]"])
    cfg = st.trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 0.5, "scale": 1.0}), spec)
    assert spec.task == ws.task
    jobs = get_method("swag").plan(cfg)
    assert [(j.index, j.member, j.make, j.parent) for j in jobs] == [
        (1, True, "train", None), (2, False, "swag-collect", 1), (3, True, "swag-sample", 2),
        (4, True, "swag-sample", 2)]
    assert jobs[2].options == (("bn_images", BN_IMAGES), ("scale", 1.0))
    done = _run(ws, jobs)
    walk, first = done[2], done[1]
    assert walk.epochs == 5 and int(walk.extras["count"]) == 6, "member 1 and each of the 5 epochs"
    params = flat_weights(ws.model_from(first.state, CPU))
    assert walk.extras["deviations"].shape == (6, len(params))
    gathered = walk.extras["mean"].float() + walk.extras["deviations"]
    assert torch.allclose(gathered[0], params, atol=1e-6), "the first iterate is member 1"
    assert torch.allclose(gathered[-1], flat_weights(ws.model_from(walk.state, CPU)), atol=1e-6), "the walk's end"
    assert 0 < (walk.extras["mean"].float() - params).norm() < params.norm()
    one, two = (flat_weights(ws.model_from(done[k].state, CPU)) for k in (3, 4))
    assert not torch.equal(one, two) and not torch.equal(one, params)
    assert not torch.equal(_bn(done[3].state), _bn(walk.state)), "BatchNorm re-estimated for the draw"
    again = ws.train(done[3].key, jobs[2], walk, CPU)
    assert all(torch.equal(again.state[k], v) for k, v in done[3].state.items()), "same seed, same member"
    # the draws stay in member 1's basin
    assert min(_accuracy(done[k].val_probs, ws) for k in (3, 4)) > _accuracy(first.val_probs, ws) - 0.15


def test_a_laplace_trial_on_the_demo_task(ws):
    spec = load_checked("laplace-demo", ["members=3", "finetune.epochs=10"])
    assert spec.task == ws.task
    runs = {}
    for scale in (0.05, 0.1):
        cfg = st.trial_config(optuna.trial.FixedTrial({"scale": scale}), spec)
        jobs = get_method("laplace").plan(cfg)
        assert [(j.index, j.member, j.make, j.parent) for j in jobs] == [
            (1, True, "train", None), (2, False, "kfac", 1), (3, True, "laplace-sample", 2),
            (4, True, "laplace-sample", 2)]
        assert jobs[1].options == (("positions", "mean"),)
        assert jobs[2].options == (("bn_images", BN_IMAGES), ("prior_precision", 5e-4), ("scale", scale))
        runs[scale] = done = _run(ws, jobs)
    done = runs[0.1]
    first, factors = done[1], done[2].extras
    assert done[2].epochs == 0 and all(torch.equal(done[2].state[k], v) for k, v in first.state.items())
    assert int(factors["examples"]) == len(ws.data.train)
    assert factors["Q/features.1"].shape == (65, 65) and factors["H/features.1"].shape == (512, 512)
    assert factors["Q/head"].shape == (513, 513) and factors["H/head"].shape == (10, 10)
    assert int(factors["positions/head"]) == 1, "a Linear layer on vectors: one position"
    assert torch.allclose(factors["H/head"].sum(1), torch.zeros(10), atol=1e-5), "softmax gradients sum to 0"
    head = {s: [runs[s][k].state["head.weight"] - first.state["head.weight"] for k in (3, 4)] for s in runs}
    assert not torch.equal(head[0.1][0], head[0.1][1]), "distinct members"
    # the same seed draws the same direction, its length in proportion to the scale
    assert torch.allclose(head[0.1][0], 2 * head[0.05][0], atol=1e-6)
    assert not torch.equal(_bn(done[3].state), _bn(first.state)), "BatchNorm re-estimated for the draw"
    again = ws.train(done[3].key, jobs[2], done[2], CPU)
    assert all(torch.equal(again.state[k], v) for k, v in done[3].state.items()), "same seed, same member"
    assert min(_accuracy(done[k].val_probs, ws) for k in (3, 4)) > _accuracy(first.val_probs, ws) - 0.15


def test_member_one_with_its_batchnorm_re_estimated_as_a_sample_stays_close_to_itself(ws):
    """A draw at scale 0 is member 1 itself with BatchNorm re-estimated as every sampled member's is: it keeps
    member 1's validation accuracy, where one augmented epoch of the 99 digits cost it points."""
    import dataclasses

    spec = load_checked("laplace-demo")  # the x1 recipe in full: member 1 as starsse-demo trains it
    cfg = TrialConfig(task=spec.task, recipe=spec.finetune, method="laplace", members=2, scale=0.0, seed=3,
                      options=tuple(sorted(spec.options.items())))
    first, factors, sample = get_method("laplace").plan(cfg)
    done = _run(ws, [first, factors, sample])
    assert all(torch.equal(done[3].state[k], v) for k, v in done[1].state.items() if k.endswith(("weight", "bias")))
    trained, again = _accuracy(done[1].val_probs, ws), _accuracy(done[3].val_probs, ws)
    # Measured this way over seeds 0-7, ATEN_CPU_CAPABILITY default and avx2: -0.32 to +0.32 points (+0.06 and
    # +0.29 at seed 3); with one epoch -0.57 to -2.64 (-2.64 and -2.39 at seed 3).
    assert abs(again - trained) < 0.008, (trained, again)
    one_epoch = dataclasses.replace(sample, options=tuple((k, 0 if k == "bn_images" else v) for k, v in sample.options))
    before = ws.train("k", one_epoch, done[2], CPU)
    assert trained - _accuracy(before.val_probs, ws) > 0.008, "what one epoch of re-estimation cost"
