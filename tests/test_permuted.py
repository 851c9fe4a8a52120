"""Permuted ensembles: weight matching finds known permutations, permutes without changing a network's
function, brings members closer to member 1, and runs as a plan through the workspace."""

import dataclasses

import optuna
import pytest
import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

import enstune.methods.permuted  # noqa: F401  (registration)
from enstune.checks import load_checked
from enstune.errors import ConfigError
from enstune.members import Workspace
from enstune.methods import get_method
from enstune.methods.permuted import apply_permutation, permutation_spec, weight_matching
from enstune.models import create_model
from enstune.models.small import MLP
from enstune.study import trial_config

CPU = torch.device("cpu")


def _tiny_resnet(kind: str) -> torch.nn.Module:
    if kind == "basic":  # resnet18's layout: layer1 adds to the stem's units without a projection
        return ResNet(BasicBlock, (2, 1, 1, 1), num_classes=5, channels=(64, 16, 16, 32))
    return ResNet(Bottleneck, (2, 1, 1, 1), num_classes=5, channels=(8, 8, 16, 16), stem_width=8,
                  stem_type="deep", avg_down=True)  # resnet50d's deep stem and pooled projections


NETS = {"demo_mlp": (lambda: create_model("demo_mlp", 10), (4, 1, 8, 8)),
        "resnet_basic": (lambda: _tiny_resnet("basic"), (2, 3, 32, 32)),
        "resnet_bottleneck": (lambda: _tiny_resnet("bottleneck"), (2, 3, 32, 32))}


def _random_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights with BatchNorm's affine parameters and statistics moved off their initial
    constants, so that a unit permuted in the wrong place shows in the outputs."""
    out = {}
    for key, value in model.state_dict().items():
        if value.dim() == 1 and value.is_floating_point() and not key.startswith(("head", "fc")):
            value = (0.5 + torch.rand_like(value) if key.endswith(("running_var", "weight"))
                     else 0.3 * torch.randn_like(value))
        out[key] = value
    return out


def _random_perm(spec, state, seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = {p: state[k].shape[axis] for k, perms in spec.items() for axis, p in enumerate(perms) if p is not None}
    return {p: torch.randperm(n, generator=generator) for p, n in sizes.items()}


def _distance(a, b, keys) -> float:
    return sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys).sqrt().item()


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_permutation_is_a_symmetry_of_every_supported_network(name):
    torch.manual_seed(0)
    build, shape = NETS[name]
    model = build().eval()
    state = _random_state(model)
    model.load_state_dict(state)
    spec = permutation_spec(model)
    assert set(spec) == set(state), "every entry of the state is placed"
    permuted = apply_permutation(spec, _random_perm(spec, state, 1), state)
    moved = [k for k in spec if not torch.equal(permuted[k], state[k])]
    assert len(moved) >= len([k for k in spec if any(spec[k])]) - 2, "a random permutation moves the weights"
    other = build().eval()
    other.load_state_dict(permuted)
    x = torch.randn(shape)
    with torch.no_grad():
        want, got = model(x), other(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["demo_mlp", "resnet_bottleneck"])
def test_weight_matching_recovers_a_known_permutation_exactly(name):
    torch.manual_seed(2)
    model = NETS[name][0]()
    state = _random_state(model)
    spec = permutation_spec(model)
    shuffled = apply_permutation(spec, _random_perm(spec, state, 3), state)
    params = {k for k, _ in model.named_parameters()}
    found = weight_matching({k: v for k, v in spec.items() if k in params}, state, shuffled, seed=5)
    back = apply_permutation(spec, found, shuffled)
    assert all(torch.equal(back[k], state[k]) for k in state), "the very same weights, BN statistics included"


def test_each_sweep_of_weight_matching_brings_a_network_no_further_from_the_reference():
    torch.manual_seed(4)
    model, other = MLP(64, 128, 3, 10), MLP(64, 128, 3, 10)
    spec = permutation_spec(model)
    params = [k for k, _ in model.named_parameters()]
    matched = {k: spec[k] for k in params}
    a, b = model.state_dict(), other.state_dict()
    distances = [_distance(a, b, params)] + [
        _distance(a, apply_permutation(spec, weight_matching(matched, a, b, iterations=n), b), params)
        for n in (1, 2)]
    assert distances[0] > distances[1] >= distances[2] - 1e-9, distances
    assert distances[2] < 0.97 * distances[0], "two random networks of 128-unit layers have far closer orders"


def test_the_plan_permutes_global_de_members_into_member_one():
    # Global DE's own options (Appendix K's diversified recipes) reach the members that are permuted.
    spec = load_checked("permuted-demo", ["members=4", "options.match_iterations=7", "options.match_seed=3",
                                          "options.div_lr_low=0.5", "options.div_lr_high=2"])
    cfg = _cfg(spec, seed=2)
    jobs = get_method("permuted").plan(cfg)
    members = [j for j in jobs if j.member]
    assert [j.index for j in members] == [1, 3, 5, 7] and len(jobs) == 7
    glob = get_method("global_de").plan(cfg)
    for k, job in enumerate(members[1:], start=2):
        step = jobs[job.parent - 1]
        assert not step.member and dataclasses.replace(step, index=k, member=True) == glob[k - 1], \
            "the step is Global DE's member k, job for job"
        assert job.make == "permute" and job.refs == (1,) and job.options == (("iterations", 7), ("seed", 3))
    assert members[0] == glob[0]
    assert len({jobs[j.parent - 1].recipe.lr for j in members[1:]}) == 3, "diversified, as Global DE's"
    assert len({j.seed for j in jobs}) == len(jobs)


def _cfg(spec, seed=0):
    return trial_config(optuna.trial.FixedTrial({"seed": seed}), spec)


def test_networks_and_settings_weight_matching_cannot_serve_are_refused_where_the_study_is_created():
    method = get_method("permuted")
    for model, why in [("vit_tiny_patch16_224", "knows enstune's demo MLPs and timm's ResNets"),
                       ("seresnet18", "layer1.0.se"), ("resnext50_32x4d", "grouped convolution")]:
        with pytest.raises(ConfigError, match=f"method permuted: .*{why}"):
            method.check(load_checked("permuted-demo", [f"task.model={model!r}"]))
    for option, value in [("match_iterations", 0), ("match_iterations", 2.5), ("match_seed", -1)]:
        with pytest.raises(ConfigError, match=f"options.{option}"):
            method.check(load_checked("permuted-demo", [f"options.{option}={value}"]))
    method.check(load_checked("permuted-cifar100"))  # timm's ResNet-50


def test_a_permuted_member_predicts_as_its_global_de_member_and_sits_closer_to_member_one(home):
    spec = load_checked("permuted-demo", ["members=2", "finetune.epochs=8", "options.match_iterations=5"])
    ws = Workspace(spec.task, home)
    first, step, permuted = get_method("permuted").plan(_cfg(spec))
    r1 = ws.run(first, None, CPU)
    r2 = ws.run(step, None, CPU)
    r3 = ws.run(permuted, r2, CPU, refs={1: r1})
    assert r3.epochs == 0 and r3.extras and all(k.startswith("permutation/") for k in r3.extras)
    torch.testing.assert_close(r3.val_probs, r2.val_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(r3.test_probs, r2.test_probs, atol=1e-5, rtol=0)
    params = [k for k, _ in create_model("demo_mlp", 10).named_parameters()]
    before, after = _distance(r1.state, r2.state, params), _distance(r1.state, r3.state, params)
    assert after < 0.95 * before, (before, after)
    assert ws.run(permuted, r2, CPU, refs={1: r1}).cached, "a permuted member is cached like a trained one"
    glob = get_method("global_de").plan(dataclasses.replace(_cfg(spec), method="global_de"))
    assert ws.job_key(glob[1], None) == r2.key, "Global DE's member 2 is the step, from the cache"
