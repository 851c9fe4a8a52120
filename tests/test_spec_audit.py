"""`enstune study create` as a user types it: a spec a worker would fail on is refused in one line, nothing stored."""

import json

import pytest
from typer.testing import CliRunner

from enstune.cli import app

runner = CliRunner()
SEEDS = list(range(1000))
TPE = 'sampler="tpe"'


def invoke(*args: str):
    return runner.invoke(app, list(args))


def refused(result, fragment: str) -> None:
    """Exit 1, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


# Each of these created a study (or, for the 400-digit lr, crashed as an internal error) before
# the spec was checked against what a worker meets; every trial of the study would then fail.
@pytest.mark.parametrize("sets, fragment", [
    (["space.lr_mult.choices=[nan]"], "space.lr_mult must be numbers > 0 and <= 1000, got [nan]"),
    (["space.lr_mult.choices=[1e308]"], "space.lr_mult must be numbers > 0 and <= 1000, got [1e+308]"),
    (["space.epoch_mult.choices=[1e18]"], "space.epoch_mult must be numbers > 0 and <= 100"),
    (["space.epochs.choices=[2.5]"], "space.epochs must be whole numbers in 1..10000, got [2.5]"),
    (["space.weight_decay.choices=[-1]"], "space.weight_decay must be finite numbers >= 0, got [-1]"),
    (["space.lr_mult.choices=[1, 1.0]"], "space.lr_mult lists a choice twice"),
    ([TPE, "space.lr_mult={low=1, high=2, step=0}"], "space.lr_mult.step must be > 0, got 0.0"),
    ([TPE, "space.weight_decay={low=0, high=1, log=true}"], "space.weight_decay: a log range needs low > 0"),
    ([TPE, "space.epochs={low=1, high=5}"], "space.epochs takes a list of choices"),
    ([f"space.seed.choices={SEEDS}"], "space: a grid of at most 10000 points, got 16000"),
    (["n_trials=10000000"], "n_trials must be in 1..10**6, got 10000000"),
    (["interp_points=1000000000"], "interp_points must be in 2..1000"),
    (["heartbeat=0"], "heartbeat must be in 1..86400 seconds, got 0"),
    (["task.split_seed=18446744073709551616"], "task.split_seed must be in 0..2**32-1"),
    (['task.data_dir="{data}/x"'], "task.data_dir: {home} is the only placeholder"),
    (["finetune.lr=1" + "0" * 400], "finetune.lr must be finite"),
    (['description="oops'], "--set description: malformed TOML value"),
    (["space.lr_mult.choices=[1, 2"], "--set space.lr_mult.choices: malformed TOML value '[1, 2'"),
    (["members=3\nn_trials=9"], "--set members: one TOML value expected"),
    (["finetune..lr=1"], "--set finetune..lr: a dotted key has an empty part"),
])
def test_create_refuses_what_every_trial_would_fail_on(sets, fragment):
    args = [arg for item in sets for arg in ("--set", item)]
    refused(invoke("study", "create", "starsse-demo", "--name", "new", *args), fragment)
    assert json.loads(invoke("study", "list", "--json").stdout) == [], "nothing was stored"


def test_create_refuses_a_plan_that_needs_more_checkpoints_than_listed():
    refused(invoke("study", "create", "globalde-demo", "--set", 'task.checkpoints=["a.pt"]'),
            "task.checkpoints lists 1 file, and method global_de with members=5 needs 5")
    assert json.loads(invoke("study", "list", "--json").stdout) == []


def test_a_refused_create_leaves_the_study_of_that_name_alone():
    assert invoke("study", "create", "starsse-demo").exit_code == 0
    before = json.loads(invoke("study", "show", "starsse-demo", "--json").stdout)
    refused(invoke("study", "create", "starsse-demo", "--set", "space.lr_mult.choices=[nan]"), "space.lr_mult")
    assert json.loads(invoke("study", "show", "starsse-demo", "--json").stdout) == before


def test_the_stored_spec_carries_the_heartbeat():
    assert invoke("study", "create", "starsse-demo", "--set", "heartbeat=30").exit_code == 0
    assert json.loads(invoke("study", "show", "starsse-demo", "--json").stdout)["spec"]["heartbeat"] == 30
