"""`enstune select`: Caruana et al.'s greedy selection across trials, from cached predictions only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune.cli import app
from enstune.errors import EnstuneError
from enstune.select import greedy_selection

ENSTUNE = str(Path(sys.executable).parent / "enstune")
runner = CliRunner()


def probs(class0: list[float]) -> torch.Tensor:
    """Two-class probabilities from the probability of class 0 per image."""
    p = torch.tensor(class0)
    return torch.stack([p, 1 - p], dim=1)


ALL_ZERO = torch.zeros(4, dtype=torch.long)


def test_a_redundant_copy_of_the_best_member_is_passed_over_for_a_complementary_one():
    best = probs([0.6, 0.6, 0.6, 0.3])  # 3/4 alone
    copy = probs([0.6, 0.6, 0.6, 0.29])  # 3/4 alone, the second best (a slightly worse NLL): adds nothing
    other = probs([0.45, 0.45, 0.9, 0.9])  # 2/4 alone, right where the best is wrong
    taken = greedy_selection([best, copy, other], ALL_ZERO, 2)
    assert taken == [0, 2]  # the top two by accuracy alone would be [0, 1], at 3/4
    ensemble = torch.stack([[best, copy, other][i] for i in taken]).mean(0)
    assert (ensemble.argmax(1) == ALL_ZERO).all()
    assert 1 not in greedy_selection([best, copy, other], ALL_ZERO, 10)


def test_selection_with_replacement_takes_a_member_twice():
    labels = torch.zeros(3, dtype=torch.long)
    a = probs([0.7, 0.7, 0.4])  # 2/3
    b = probs([0.2, 0.45, 0.9])  # 1/3; a + b: 2/3, 2a + b: 3/3
    assert greedy_selection([a, b], labels, 3) == [0, 0, 1]
    longer = greedy_selection([a, b], labels, 10)
    assert longer[:3] == [0, 0, 1] and longer.count(0) >= 2


def test_the_chosen_prefix_is_never_worse_than_the_best_single_member():
    labels = torch.zeros(3, dtype=torch.long)
    alone = probs([0.6, 0.6, 0.4])  # 2/3
    harmful = probs([0.2, 0.2, 0.7])  # 1/3; no mixture with it is right on more images, none has a lower NLL
    assert greedy_selection([harmful, alone], labels, 10) == [1]


def test_ties_go_to_the_earlier_member_and_a_size_below_one_is_refused():
    labels = torch.zeros(3, dtype=torch.long)
    same = probs([0.6, 0.6, 0.4])
    assert greedy_selection([same, same.clone()], labels, 1) == [0]
    with pytest.raises(EnstuneError, match="--size must be >= 1, got 0"):
        greedy_selection([same], labels, 0)


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_unknown_study_no_completed_trial_and_a_bad_size_are_one_line_errors():
    one_line_error(runner.invoke(app, ["select", "missing"]), "no study named 'missing'")
    assert runner.invoke(app, ["study", "create", "starsse-demo", *TINY_SET]).exit_code == 0
    one_line_error(runner.invoke(app, ["select", "starsse-demo"]), "has no completed trial")
    one_line_error(runner.invoke(app, ["select", "starsse-demo", "--size", "0"]), "--size must be >= 1, got 0")


def test_select_builds_an_ensemble_across_trials_and_skips_a_damaged_entry(home):
    sets = [*TINY_SET, "--set", "pruner=none", "--set", "evaluate=[]"]
    assert runner.invoke(app, ["study", "create", "starsse-demo", *sets]).exit_code == 0
    ran = runner.invoke(app, ["study", "run", "starsse-demo"])
    assert ran.exit_code == 0, ran.output
    trials = json.loads(runner.invoke(app, ["study", "show", "starsse-demo", "--json"]).stdout)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    keys = {k for t in trials for k in t["user_attrs"]["member_keys"]}
    assert len(keys) == 7  # member 1 is shared by the three trials

    default = json.loads(runner.invoke(app, ["select", "starsse-demo", "--json"]).stdout)
    assert default["size"] == default["members_per_trial"] == 3  # the study's K: like with like
    assert sum(m["weight"] for m in default["members"]) <= 3 and default["at_trial_size"]["val_acc"] == default["val_acc"]
    result = runner.invoke(app, ["select", "starsse-demo", "--json", "--soup", "--size", "10"])
    assert result.exit_code == 0, result.output
    sel = json.loads(result.stdout)
    assert sel["candidates"] == 7 and sel["skipped"] == 0
    assert sel["members"] and all(m["weight"] >= 1 for m in sel["members"]), sel["members"]
    assert sum(m["weight"] for m in sel["members"]) <= 10 and sel["at_trial_size"] == default["at_trial_size"]
    for m in sel["members"]:
        assert trials[m["trial"]]["user_attrs"]["member_keys"][m["index"] - 1] == m["key"]
    assert sel["val_acc"] >= max(t["user_attrs"]["val_ens_acc"][-1] for t in trials)
    assert sel["val_acc"] >= sel["best_member"]["val_acc"]
    assert sel["best_trial"]["test_acc"] == max(trials, key=lambda t: t["value"])["user_attrs"]["test_ens_acc"][-1]
    assert 0 < sel["test_acc"] <= 1 and sel["test_nll"] > 0 and 0 <= sel["test_ece"] <= 1
    wide = runner.invoke(app, ["select", "starsse-demo", "--size", "9"])  # more than K: both sizes shown
    assert wide.exit_code == 0 and "selected, ≤ 9" in wide.stdout and "selected, ≤ 3" in wide.stdout, wide.stdout
    assert "best trial" in wide.stdout
    soup = sel["soup"]
    assert {m["key"] for m in soup["members"]} <= {m["key"] for m in sel["members"]}
    assert 0 < soup["val_acc"] <= 1 and 0 < soup["test_acc"] <= 1

    entry = home / "artifacts" / f"member-{sorted(keys)[0]}.pt"
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # inside the payload: its digest no longer matches
    entry.write_bytes(bytes(damaged))
    # A process of its own: the cache notes each damaged entry once per process.
    done = subprocess.run([ENSTUNE, "select", "starsse-demo", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == ["warning: 1 of 7 members skipped: their cache entries are missing "
                                                "or damaged"]
    assert json.loads(done.stdout)["candidates"] == 6

    for path in (home / "artifacts").glob("member-*.pt"):
        path.unlink()
    one_line_error(runner.invoke(app, ["select", "starsse-demo"]), "none of the 7 members")
