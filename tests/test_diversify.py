"""Appendix K's diversification: members' lr, weight decay, epochs and colour limits drawn per member."""

import colorsys
import dataclasses
import math

import optuna
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import enstune.methods.deep_ensembles  # noqa: F401  (registration, whether or not the package imports it yet)
import enstune.methods.snapshot  # noqa: F401
from enstune import study as st
from enstune.checks import load_checked
from enstune.config import Task, TrialConfig
from enstune.data.augment import color_jitters, random_color
from enstune.errors import ConfigError
from enstune.members import Workspace
from enstune.methods import MemberJob, get_method, member_seed
from enstune.models import create_model
from enstune.recipe import Augmentation, Diversity, Recipe

FT = Recipe(epochs=25, lr=0.05, weight_decay=1e-4, batch_size=32, warmup_epochs=1)
# Appendix K's CIFAR-100 segments as factors of the recipe they surround.
LOCAL = {"div_lr_low": 0.7, "div_lr_high": 1.4, "div_wd_low": 0.5, "div_wd_high": 2.0,
         "div_epochs_low": 0.8, "div_epochs_high": 2.0, "div_color": 1.0}
STAR = LOCAL | {"div_lr_low": 0.8, "div_lr_high": 1.2, "div_epochs_low": 0.72, "div_epochs_high": 1.4}
METHODS = ("local_de", "global_de", "starsse")


def cfg(method: str, options: dict[str, float] | None = None, members: int = 5, seed: int = 3) -> TrialConfig:
    return TrialConfig(task=Task(), recipe=FT, method=method, members=members, lr_mult=2.0, epoch_mult=1.0,
                       seed=seed, options=tuple(sorted((options or {}).items())))


def todays_plan(method: str, c: TrialConfig) -> list[MemberJob]:
    """The plans as written before diversification existed."""
    seeds = [member_seed(c.seed, k) for k in range(1, c.members + 1)]
    if method == "local_de":
        return [MemberJob(k, FT, s, checkpoint=0) for k, s in enumerate(seeds, 1)]
    if method == "global_de":
        return [MemberJob(k, FT, s, checkpoint=k - 1) for k, s in enumerate(seeds, 1)]
    cycle = FT.cycle(c.lr_mult, c.epoch_mult)
    return [MemberJob(1, FT, seeds[0], checkpoint=0)] + [
        MemberJob(k, cycle, s, parent=1) for k, s in enumerate(seeds[1:], 2)]


@pytest.mark.parametrize("method", METHODS)
def test_plans_without_the_options_or_with_their_defaults_are_todays(method):
    defaults = {k: s.default for k, s in get_method(method).options.items()}
    assert set(defaults) == set(LOCAL)
    for options in (None, defaults):
        c = cfg(method, options)
        assert get_method(method).plan(c) == todays_plan(method, c)


def in_range(value: float, low: float, high: float) -> bool:
    return low * (1 - 1e-12) <= value <= high * (1 + 1e-12)


def check_color(recipe: Recipe) -> None:
    """Colour limits drawn from Appendix K's distributions."""
    for low, high in (recipe.color_brightness, recipe.color_contrast, recipe.color_saturation):
        assert 0.25 <= low <= 0.75 and in_range(high, 2 * low, 4 * low)
    assert 0.01 <= recipe.color_hue <= 0.2


@pytest.mark.parametrize("method", METHODS)
def test_diversified_members_differ_stay_within_their_segments_and_repeat_per_seed(method):
    star = method == "starsse"
    c = cfg(method, STAR if star else LOCAL, members=8)
    jobs = get_method(method).plan(c)
    plain = todays_plan(method, c)
    if star:  # member 1 stays the fixed x1 fine-tune, shared with every StarSSE trial
        assert jobs[0] == plain[0]
    drawn = jobs[1:] if star else jobs
    center = FT.cycle(2.0, 1.0) if star else FT
    lr, epochs = ((0.8, 1.2), (18, 35)) if star else ((0.7, 1.4), (20, 50))
    for job, before in zip(drawn, plain[len(jobs) - len(drawn):]):
        r = job.recipe
        assert dataclasses.replace(job, recipe=before.recipe) == before, "only the recipe changes"
        assert in_range(r.lr, center.lr * lr[0], center.lr * lr[1])
        assert in_range(r.weight_decay, 5e-5, 2e-4)
        assert epochs[0] <= r.epochs <= epochs[1] and isinstance(r.epochs, int)
        assert r.augmentation.color and r.augment == "default"
        check_color(r)
        assert dataclasses.replace(r, lr=center.lr, weight_decay=center.weight_decay, epochs=center.epochs,
                                   color_brightness=(1.0, 1.0), color_contrast=(1.0, 1.0),
                                   color_saturation=(1.0, 1.0), color_hue=0.0) == center
    recipes = [j.recipe for j in drawn]
    for name in ("lr", "weight_decay", "color_brightness", "color_contrast", "color_saturation", "color_hue"):
        assert len({getattr(r, name) for r in recipes}) == len(recipes), f"members differ in {name}"
    assert len({r.epochs for r in recipes}) >= 3, "whole epochs may repeat, not all alike"
    assert get_method(method).plan(c) == jobs, "the same trial, the same recipes"
    other = get_method(method).plan(dataclasses.replace(c, seed=4))
    assert all(a.recipe != b.recipe for a, b in zip(other[len(jobs) - len(drawn):], drawn))


def test_a_members_recipe_depends_on_its_seed_alone_and_colour_leaves_the_hyperparameters_as_drawn():
    local, world = (get_method(m).plan(cfg(m, LOCAL)) for m in ("local_de", "global_de"))
    assert [j.recipe for j in local] == [j.recipe for j in world]
    no_colour = get_method("local_de").plan(cfg("local_de", LOCAL | {"div_color": 0.0}))
    for a, b in zip(local, no_colour):
        assert (a.recipe.lr, a.recipe.weight_decay, a.recipe.epochs) == (b.recipe.lr, b.recipe.weight_decay,
                                                                         b.recipe.epochs)
        assert not b.recipe.augmentation.color
    colour_only = get_method("starsse").plan(cfg("starsse", {"div_color": 1.0}))
    assert all(j.recipe.lr == FT.lr * 2 and j.recipe.epochs == FT.epochs for j in colour_only[1:])


def test_factors_are_log_uniform_and_whole_epochs_cover_their_segment():
    div = Diversity(lr=(0.25, 4.0), epochs=(0.72, 1.4))
    drawn = [div.apply(FT, seed) for seed in range(3000)]
    logs = [math.log(r.lr / FT.lr) for r in drawn]
    # log-uniform on [1/4, 4]: half below 1, a quarter below 1/2; uniform on it would put a fifth below 1
    assert 0.46 < sum(v < 0 for v in logs) / len(logs) < 0.54
    assert 0.21 < sum(v < math.log(0.5) for v in logs) / len(logs) < 0.29
    assert {r.epochs for r in drawn} == set(range(18, 36)), "every whole number of epochs in [18, 35], no other"
    assert all(r.weight_decay == FT.weight_decay and not r.augmentation.color for r in drawn)
    assert Diversity().apply(FT, 7) is FT


@pytest.mark.parametrize("options, message", [
    ({"div_lr_low": 1.5, "div_lr_high": 1.2}, "div_lr_low and div_lr_high must satisfy 0 < low <= high"),
    ({"div_epochs_low": 0.0}, "div_epochs_low and div_epochs_high"),
    ({"div_color": 0.5}, "div_color must be 0 .off. or 1 .on., got 0.5"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        get_method("local_de").plan(cfg("local_de", options))


def test_templates_load_and_sse_takes_no_diversification():
    for name in ("localde-diverse-demo", "starsse-diverse-demo", "localde-diverse-cifar100",
                 "globalde-diverse-cifar100", "starsse-diverse-cifar100"):
        assert load_checked(name).options["div_color"] == 1
    with pytest.raises(ConfigError, match=r"options.div_\w+: the study's methods, regularizer and optimizer read no "
                                          r"such option"):
        load_checked("starsse-diverse-demo", ["method='sse'"])


def rgb_batch(n: int) -> torch.Tensor:
    """Coloured images away from 0 and 1, so that no jitter within the limits below clips a pixel."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([0.30, 0.20, 0.25])[None, :, None, None]
    return base + 0.03 * torch.rand(n, 3, 4, 4, generator=g)


LIMITS = {"brightness": (0.5, 2.5), "contrast": (0.4, 2.0), "saturation": (0.3, 2.5), "hue": (-0.2, 0.2)}


def factor_of(name: str, x: torch.Tensor, out: torch.Tensor) -> float:
    """The strength that turned image ``x`` into ``out``, read off one pixel."""
    if name == "brightness":
        return float(out[0, 0, 0] / x[0, 0, 0])
    if name == "hue":
        h0, h1 = (colorsys.rgb_to_hsv(*img[:, 0, 0].tolist())[0] for img in (x, out))
        return (h1 - h0 + 0.5) % 1.0 - 0.5
    grey = TF.rgb_to_grayscale(x)
    ref = grey.mean() if name == "contrast" else grey[0, 0, 0]
    return float((out[0, 0, 0] - ref) / (x[0, 0, 0] - ref))


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_colour_jitter_reaches_half_the_images_within_its_limits_as_torchvision_computes_it(name):
    limits = LIMITS[name]
    aug = Augmentation(**{name: limits[1] if name == "hue" else limits})
    x = rgb_batch(1200)
    out = random_color(x, torch.Generator().manual_seed(1), aug)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert 0.45 < changed.float().mean() < 0.55, "each jitter with probability 0.5"
    factors = [factor_of(name, x[i], out[i]) for i in changed.nonzero().flatten().tolist()]
    adjust = getattr(TF, f"adjust_{name}")
    for i, f in list(zip(changed.nonzero().flatten().tolist(), factors))[:40]:
        torch.testing.assert_close(out[i], adjust(x[i], f), atol=2e-4, rtol=0)
    low, high = limits
    width = high - low
    assert low - 1e-3 <= min(factors) < low + 0.05 * width and high - 0.05 * width < max(factors) <= high + 1e-3
    assert sum(factors) / len(factors) == pytest.approx((low + high) / 2, abs=0.05 * width), "uniform strength"
    assert torch.equal(out[~changed], x[~changed]), "the others untouched"


def test_colour_jitter_off_or_on_grey_images():
    x = rgb_batch(64)
    g = torch.Generator().manual_seed(3)
    assert random_color(x, g, Augmentation()) is x
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state()), "no draws when off"
    grey = x[:, :1]
    all_four = Augmentation(brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.1, 3.0), hue=0.2)
    assert torch.equal(random_color(grey, g, Augmentation(saturation=(0.1, 3.0), hue=0.2)), grey), \
        "saturation and hue leave grey images as they are"
    assert (random_color(grey, g, all_four) != grey).flatten(1).any(1).float().mean() > 0.5
    assert torch.equal(random_color(x, torch.Generator().manual_seed(5), all_four),
                       random_color(x, torch.Generator().manual_seed(5), all_four)), "seeded"


def test_the_per_image_jitters_are_torchvisions_with_probability_one_half():
    steps = color_jitters(Augmentation(brightness=(0.5, 1.5), contrast=(0.4, 2.0), hue=0.1))
    assert [s.p for s in steps] == [0.5] * 3
    jitters = [s.transforms[0] for s in steps]
    assert all(isinstance(j, v2.ColorJitter) for j in jitters)
    assert [(j.brightness, j.contrast, j.saturation, j.hue) for j in jitters] == [
        ((0.5, 1.5), None, None, None), (None, (0.4, 2.0), None, None), (None, None, None, (-0.1, 0.1))]
    image = (rgb_batch(1)[0] * 255).to(torch.uint8)
    torch.manual_seed(0)
    changed = [not torch.equal(steps[0](image), image) for _ in range(600)]
    assert 0.44 < sum(changed) / len(changed) < 0.56
    with pytest.raises(ValueError, match="brightness"):
        color_jitters(Augmentation(brightness=(2.0, 1.0)))


def test_a_diversified_starsse_trial_trains_each_member_with_its_own_recipe(home):
    # An untrained network as the pre-trained checkpoint: what is tested is the plan reaching the training loop.
    home.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": create_model("demo_mlp", 10).state_dict()}, home / "start.pt")
    spec = load_checked("starsse-diverse-demo",
                        ["members=3", "finetune.epochs=4", 'task.checkpoints=["{home}/start.pt"]'])
    trial = optuna.trial.FixedTrial({"lr_mult": 2, "epoch_mult": 1, "seed": 0})
    c = st.trial_config(trial, spec)
    jobs = get_method("starsse").plan(c)
    plain = get_method("starsse").plan(dataclasses.replace(c, options=()))
    ws = Workspace(spec.task, home)
    cpu = torch.device("cpu")
    first = ws.run(plain[0], None, cpu)
    results = [ws.run(jobs[0], None, cpu)]
    assert results[0].cached and results[0].key == first.key, "member 1 is the shared fine-tune"
    for job in jobs[1:]:
        results.append(ws.run(job, results[0], cpu))
    assert [r.epochs for r in results] == [j.recipe.epochs for j in jobs]
    assert all(3 <= j.recipe.epochs <= 5 for j in jobs[1:]) and jobs[1].recipe != jobs[2].recipe
    keys = {r.key for r in results}
    assert len(keys) == 3 and not keys & {ws.job_key(j, first) for j in plain[1:]}, "the recipe is in the key"
    for r in results:
        assert torch.allclose(r.val_probs.sum(1), torch.ones(len(r.val_probs)))
    assert not torch.equal(results[1].val_probs, results[2].val_probs)
    assert ws.run(jobs[1], results[0], cpu).cached, "a diversified member comes back from the cache"
