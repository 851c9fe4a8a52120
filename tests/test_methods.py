import dataclasses
import math

import pytest

from enstune.config import Task, TrialConfig
from enstune.methods import MemberJob, get_method, list_methods
from enstune.recipe import Recipe
from enstune.methods._base import regularize
from enstune.errors import ConfigError

FT = Recipe(epochs=10, lr=0.1, weight_decay=1e-4, batch_size=32, warmup_epochs=1)


def cfg(method: str, members: int = 5, lr_mult: float = 4.0, epoch_mult: float = 0.35, seed: int = 3) -> TrialConfig:
    return TrialConfig(task=Task(), recipe=FT, method=method, members=members, lr_mult=lr_mult,
                       epoch_mult=epoch_mult, seed=seed)


@pytest.mark.parametrize("name", list_methods())
def test_every_plan_is_well_formed(name):
    jobs = get_method(name).plan(cfg(name))
    assert [j.index for j in jobs] == list(range(1, len(jobs) + 1))
    assert len(jobs) == (1 if name == "finetune" else 5)
    assert all(j.parent is None or j.parent < j.index for j in jobs)
    assert len({j.seed for j in jobs}) == len(jobs), "members need distinct seeds"
    first = jobs[0]
    assert first.checkpoint == 0
    assert first.recipe == FT and first.recipe.warmup_epochs == 1


@pytest.mark.parametrize("name", list_methods())
def test_member_one_does_not_depend_on_cycle_parameters(name):
    a = get_method(name).plan(cfg(name, lr_mult=0.25, epoch_mult=4))[0]
    b = get_method(name).plan(cfg(name, lr_mult=16, epoch_mult=0.25))[0]
    assert a == b


# Two values of each parameter that must give different plans wherever the parameter is read.
VARIED = {"lr_mult": (2.0, 8.0), "epoch_mult": (0.5, 2.0), "alpha": (0.1, 1.0), "freeze": (0, 1)}


@pytest.mark.parametrize("param", sorted(VARIED))
@pytest.mark.parametrize("name", list_methods())
def test_a_method_reads_exactly_the_parameters_it_declares(name, param):
    def jobs(value):
        c = dataclasses.replace(cfg(name), regularizer="mse", **{param: value})
        return regularize(get_method(name).plan(c), c)

    low, high = VARIED[param]
    assert (jobs(low) != jobs(high)) == (param in get_method(name).reads)


def test_sse_is_a_chain_with_the_cycle_recipe():
    jobs = get_method("sse").plan(cfg("sse"))
    assert [j.parent for j in jobs] == [None, 1, 2, 3, 4]
    for j in jobs[1:]:
        assert j.recipe.lr == pytest.approx(0.4)
        assert j.recipe.epochs == math.floor(10 * 0.35) == 3
        assert j.recipe.warmup_epochs == 0 and j.recipe.schedule == "cosine"


def test_starsse_is_a_star_from_member_one():
    jobs = get_method("starsse").plan(cfg("starsse"))
    assert [j.parent for j in jobs] == [None, 1, 1, 1, 1]
    assert all(j.recipe == jobs[1].recipe for j in jobs[1:])


def test_cycle_epochs_are_at_least_one():
    jobs = get_method("starsse").plan(cfg("starsse", epoch_mult=0.01))
    assert jobs[1].recipe.epochs == 1


def test_deep_ensembles_start_from_checkpoints():
    local = get_method("local_de").plan(cfg("local_de"))
    glob = get_method("global_de").plan(cfg("global_de"))
    assert [j.checkpoint for j in local] == [0] * 5
    assert [j.checkpoint for j in glob] == [0, 1, 2, 3, 4]
    assert all(j.recipe == FT for j in local + glob)
    assert local[0] == get_method("starsse").plan(cfg("starsse"))[0], "member 1 is shared across methods"


def test_a_job_has_exactly_one_starting_point():
    r = FT
    with pytest.raises(ValueError):
        MemberJob(2, r, 0, checkpoint=0, parent=1)
    with pytest.raises(ValueError):
        MemberJob(2, r, 0, parent=2)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'bagging'; known: .*starsse"):
        get_method("bagging")
