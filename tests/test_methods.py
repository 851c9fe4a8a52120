import dataclasses
import math

import pytest

from conftest import with_pretrained
from enstune.config import Task, TrialConfig
from enstune.methods import MemberJob, get_maker, get_method, list_methods
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
    assert sum(j.member for j in jobs) == (1 if name == "finetune" else 5)
    assert all(j.parent is None or j.parent < j.index for j in jobs)
    members = [j for j in jobs if j.member]
    assert len({j.seed for j in members}) == len(members), "members need distinct seeds"
    # A step may replay a member's own run (distilled's trunk is member 1's first t epochs), so it shares that seed.
    assert len({(j.seed, j.checkpoint, j.parent, j.make, j.options) for j in jobs}) == len(jobs), "no job twice"
    assert all(get_maker(j.make) for j in jobs)
    assert jobs[0].checkpoint == 0


# The ×1 fine-tune of checkpoint 0 that most methods share as member 1 (one cache entry for all of them).
SHARED_FIRST = MemberJob(1, FT, 3 * 1000 + 1, checkpoint=0)


@pytest.mark.parametrize("name", list_methods())
def test_shared_members_are_the_shared_fine_tune_and_ignore_every_axis(name):
    method = get_method(name)
    members = [j for j in method.plan(cfg(name)) if j.member]
    assert method.shared_members <= 1
    if method.shared_members:
        first = members[0]
        # From a checkpoint with the ×1 recipe it is the ×1 fine-tune (constrained's branches off a trunk; SWE's
        # member 1 holds its decay at a tenth of the peak, the same in every SWE trial but not annealed).
        if first.checkpoint is not None and first.recipe == SHARED_FIRST.recipe:
            assert first == SHARED_FIRST
        for param, (low, high) in VARIED.items():
            plans = [regularize(method.plan(c), c) for c in
                     (dataclasses.replace(cfg(name), regularizer="mse", **{param: v}) for v in (low, high))]
            assert [j for j in plans[0] if j.member][0] == [j for j in plans[1] if j.member][0] == first


# Two values of each parameter that must give different plans wherever the parameter is read.
VARIED = {"lr_mult": (2.0, 8.0), "epoch_mult": (0.5, 2.0), "alpha": (0.1, 1.0), "freeze": (0, 1), "scale": (0.1, 1.0)}


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


def template_of(method: str) -> str:
    """A method's demo template: ``local_de`` -> ``localde-demo``."""
    return f"{method.replace('_', '')}-demo"


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory, pretrained):
    """One runs directory for the module: the demo's data is made once."""
    return with_pretrained(tmp_path_factory.mktemp("runs"), pretrained)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_runs_a_trial_of_its_demo_template(name, shared_home, monkeypatch):
    """The whole path a user takes: create from ``<method>-demo``, one small trial, the ensemble in the study."""
    import json
    import re

    import optuna
    from typer.testing import CliRunner

    from enstune.cli import app
    from enstune.storage import open_storage
    from enstune.study import load_spec, trial_config

    monkeypatch.setenv("ENSTUNE_HOME", str(shared_home))
    runner = CliRunner()
    sets = ["members=3", "finetune.epochs=3", "n_trials=1", 'evaluate=["calibration"]', "bn_images=64"]
    created = runner.invoke(app, ["study", "create", template_of(name), *[a for s in sets for a in ("--set", s)]])
    assert created.exit_code == 0, created.output
    ran = runner.invoke(app, ["study", "run", template_of(name)])
    assert ran.exit_code == 0, ran.output
    (trial,) = json.loads(runner.invoke(app, ["study", "show", template_of(name), "--json"]).stdout)["trials"]
    assert trial["state"] == "COMPLETE", trial
    attrs = trial["user_attrs"]
    size = 1 if name == "finetune" else 3
    assert len(attrs["val_ens_acc"]) == len(attrs["member_keys"]) == size
    assert len(set(attrs["member_keys"])) == size, "members are distinct"
    assert all(0.0 < a <= 1.0 for a in attrs["val_ens_acc"] + attrs["test_ens_acc"])
    assert 0.0 < attrs["test_ece"] < 1.0
    # The log counts members as the trial does; steps show with the member they come before.
    started = re.findall(r"(step \S+ for )?member (\d+)/(\d+) started", ran.output)
    assert sorted(int(i) for step, i, _ in started if not step) == list(range(1, size + 1)), ran.output
    assert all(1 <= int(i) <= size == int(k) for _, i, k in started), ran.output
    study = optuna.load_study(study_name=template_of(name), storage=open_storage(None))
    done = trial_config(study.trials[0], load_spec(study))  # a finished trial answers suggest_* with its params
    steps = sum(not j.member for j in get_method(name).plan(done))
    assert sum(bool(step) for step, _, _ in started) == steps, ran.output
