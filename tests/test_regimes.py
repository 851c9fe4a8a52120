"""Regime rules on exact trial records: each label, the multiplicity correction, partial trials, confidence."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune.cli import app
from enstune.errors import EnstuneError
from enstune.evaluation import pack_correct, unpack_correct
from enstune.publish import study_regimes
from enstune.regimes import Thresholds, classify, holm_worse, paired_se, regime_map, study_dict


def _correct(bits: str) -> str:
    labels = torch.zeros(len(bits), dtype=torch.long)
    probs = torch.tensor([[1.0, 0.0] if b == "1" else [0.0, 1.0] for b in bits])
    return pack_correct(probs, labels)


def row(number, acc_bits, members=(0.8, 0.8), diversity=50.0, barrier=0.0, lr=1, ep=1, state="COMPLETE",
        barrier_train=0.0):
    acc = acc_bits.count("1") / len(acc_bits)
    return {"number": number, "state": state, "params": {"lr_mult": lr, "epoch_mult": ep},
            "user_attrs": {"val_ens_acc": [members[0], acc], "val_member_acc": list(members),
                           "val_diversity": diversity, "barrier_train": barrier_train, "barrier_val": barrier,
                           "val_correct": _correct(acc_bits), "val_size": len(acc_bits), "planned_members": 2}}


def partial(number, acc_bits, contested, size=5, lr=1, ep=1, members=(0.8, 0.8)):
    """A trial pruned after two of ``size`` members, with the evidence the objective records."""
    r = row(number, acc_bits, members=members, lr=lr, ep=ep, state="PRUNED")
    r["user_attrs"].update(planned_members=size, val_contested=[0.0, contested])
    return r


BEST = "1" * 80 + "0" * 20
WORSE = "1" * 70 + "0" * 30


def test_pack_correct_round_trips():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.4]])
    packed = pack_correct(probs, torch.tensor([0, 0, 0, 1, 1]))
    assert unpack_correct(packed) == [True, False, True, True, False]


def test_paired_standard_error_by_hand():
    a = [True] * 6 + [False] * 4
    b = [True] * 4 + [False] * 2 + [True] * 1 + [False] * 3  # only a: 2, only b: 1
    assert paired_se(a, b) == pytest.approx(3 ** 0.5 / 10)
    assert paired_se(a, a) == 0.0


def test_each_label_with_its_evidence():
    rows = [
        row(0, BEST, diversity=60),
        row(1, WORSE, diversity=30),                       # clearly worse, in the basin
        row(2, WORSE, diversity=30, barrier=0.2),          # a validation barrier: left the basin
        row(3, WORSE, members=(0.8, 0.6), diversity=30),   # members degrade
        row(4, WORSE, diversity=90),                       # more diverse than the optimum: evidence, not a rule
        row(5, "1" * 79 + "0" * 21, diversity=40),         # one image from the best
    ]
    by = {g.number: g for g in classify(rows, "starsse")}
    assert {n: g.label for n, g in by.items()} == {0: "optimal", 1: "more-local", 2: "semi-local", 3: "semi-local",
                                                    4: "more-local", 5: "optimal"}
    assert {n: g.rule for n, g in by.items()} == {0: "accuracy", 1: "in-basin", 2: "barrier", 3: "degradation",
                                                   4: "in-basin", 5: "accuracy"}
    assert by[3].degradation == pytest.approx(0.2) and by[2].barrier == pytest.approx(0.2)
    assert by[4].diversity == 90 and "barrier" in by[2].reason and "member 1" in by[3].reason
    assert not any(g.partial for g in by.values())


def test_only_validation_statistics_decide():
    # A training barrier and test-set diversity are shown elsewhere but never label a trial.
    rows = [row(0, BEST), row(1, WORSE, barrier_train=0.3)]
    rows[1]["user_attrs"]["diversity"] = 99.0
    assert [g.label for g in classify(rows, "sse")] == ["optimal", "more-local"]
    assert classify(rows, "sse")[1].barrier == 0.0  # the validation barrier, not the training one


def test_holm_correction_keeps_a_setting_optimal_among_many():
    # Only the best gets 6 images right that the other misses: McNemar's z = 6 / sqrt(6) = 2.45, p = 0.0072.
    best, close = "1" * 360 + "0" * 40, "1" * 354 + "0" * 46
    few = [row(0, best), row(1, close), row(2, best)]  # 2 tests: 0.0072 <= 0.05 / 2, worse
    assert [g.label for g in classify(few, "sse")] == ["optimal", "more-local", "optimal"]
    many = few + [row(n, best) for n in range(3, 11)]  # 10 tests: 0.0072 > 0.05 / 10, not told apart
    assert classify(many, "sse")[1].label == "optimal"
    assert classify(few, "sse", Thresholds(alpha=0.01))[1].label == "optimal"  # 0.0072 > 0.01 / 2


def test_holm_steps_down_by_hand():
    # p-values of trials 1-3 against trial 0 (the best): z = 3, 2, 0 -> p 0.00135, 0.0228, 0.5
    b = np.array([[0.0, 0.0, 0.0, 50.0]])
    c = np.array([[0.0, 9.0, 4.0, 50.0]])
    worse = holm_worse(b, c, alpha=0.05)[0]
    # levels 0.05/3 then 0.05/2: 0.00135 rejected, 0.0228 rejected, 0.5 not
    assert worse.tolist() == [False, True, True, False]
    assert holm_worse(b, c, alpha=0.02)[0].tolist() == [False, True, False, False]  # 0.0228 > 0.02 / 2
    assert holm_worse(b, c, alpha=0.05, among=np.array([True, True, False, True]))[0].tolist() == \
        [False, True, False, False]  # two tests: 0.00135 <= 0.025, 0.5 not


def test_a_pruned_trial_is_labelled_from_its_bound_and_marked_partial():
    # 100 images, after 2 of 5 members: spread = sqrt(contested * (1/2 - 1/5) / 100), bound = acc + 4.5 spreads.
    rows = [row(0, BEST, members=(0.8, 0.8)),
            partial(1, WORSE, contested=0.02, lr=16),   # 0.70 + 4.5 * 0.00775 = 0.735 < 0.80: cannot reach it
            partial(2, WORSE, contested=0.60, lr=64),   # 0.70 + 4.5 * 0.0424 = 0.891 >= 0.80: may be optimal
            partial(3, WORSE, contested=0.02, lr=4, members=(0.8, 0.6))]  # degrading members: left the basin
    by = {g.number: g for g in classify(rows, "starsse")}
    assert (by[1].label, by[1].rule, by[1].partial) == ("more-local", "in-basin", True)
    assert "0.735" in by[1].reason
    assert (by[2].label, by[2].rule, by[2].partial) == ("optimal", "forecast", True)
    assert (by[3].label, by[3].rule) == ("semi-local", "degradation")
    cells = regime_map(list(by.values()), rows, "starsse")["cells"]
    assert cells[(16, 1)].split()[0].replace("?", "") == "more-local*" and cells[(64, 1)].startswith("optimal")


def test_every_trial_with_a_member_of_its_own_is_labelled():
    only_first = row(2, BEST, lr=4)
    only_first["user_attrs"].update(val_ens_acc=[0.8], val_member_acc=[0.8])
    old_pruned = row(3, WORSE, lr=16, state="PRUNED")  # no forecast recorded: nothing rules out the optimum
    old_pruned["user_attrs"]["planned_members"] = 5
    rows = [row(0, BEST), row(1, WORSE, lr=2), only_first, old_pruned]
    by = {g.number: g for g in classify(rows, "sse")}
    assert set(by) == {0, 1, 3} and by[3].partial and by[3].label == "optimal"
    assert regime_map(list(by.values()), rows, "sse")["cells"][(4, 1)] == "complete"


def test_confidence_is_high_for_clear_labels_and_lower_at_the_edges():
    # No segment measured: the barrier's noise does not enter; members that do not degrade.
    rows = [row(0, "1" * 300 + "0" * 100, members=(0.8, 0.9), barrier=None),
            row(1, "1" * 200 + "0" * 200, members=(0.8, 0.9), barrier=None),
            row(2, "1" * 300 + "0" * 100, members=(0.8, 0.7505), barrier=None)]  # degradation 0.0495, just under 0.05
    by = {g.number: g for g in classify(rows, "sse")}
    assert by[0].confidence >= 0.99 and by[1].confidence >= 0.99
    assert by[2].label == "optimal" and by[2].confidence >= 0.99  # optimal first: degradation does not matter
    rows[2] = row(2, "1" * 200 + "0" * 200, members=(0.8, 0.7505), barrier=None)
    edge = classify(rows, "sse")[2]
    assert edge.label == "more-local" and 0.3 < edge.confidence < 0.8
    assert "?" in regime_map([edge], rows, "sse")["cells"][(1, 1)]


def test_ties_at_the_top_are_all_optimal_and_methods_are_not_compared():
    rows = [row(0, BEST), row(1, BEST), row(2, "1" * 60 + "0" * 40)]
    other = row(3, "1" * 60 + "0" * 40)
    other["params"]["method"] = "sse"  # the best of its own method
    labels = {g.number: g.label for g in classify(rows + [other], "starsse")}
    assert labels == {0: "optimal", 1: "optimal", 2: "more-local", 3: "optimal"}


def test_thresholds_change_the_labels():
    rows = [row(0, BEST), row(1, "1" * 75 + "0" * 25, barrier=0.04)]
    assert [g.label for g in classify(rows, "sse")] == ["optimal", "more-local"]
    assert [g.label for g in classify(rows, "sse", Thresholds(band=0.06))] == ["optimal", "optimal"]
    assert [g.label for g in classify(rows, "sse", Thresholds(barrier=0.03))] == ["optimal", "semi-local"]
    for bad in ({"alpha": 0.0}, {"alpha": 1.5}, {"band": float("nan")}, {"replicates": 0}):
        with pytest.raises(EnstuneError):
            Thresholds(**bad)


def test_regimes_command_on_a_real_study(home):
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "r", *TINY_SET]).exit_code == 0
    assert runner.invoke(app, ["study", "run", "r"]).exit_code == 0
    shown = runner.invoke(app, ["regimes", "r", "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["thresholds"]["alpha"] == 0.05 and info["trials"] and "Holm" in info["rules"]
    assert {t["label"] for t in info["trials"]} <= {"more-local", "optimal", "semi-local"}
    assert "optimal" in {t["label"] for t in info["trials"]}
    assert all(0 <= t["confidence"] <= 1 for t in info["trials"])
    # The command's defaults are the library's: what it prints is what a caller of the library gets.
    assert info == json.loads(json.dumps(study_dict("r", Thresholds(), study_regimes("r")[0])))
    table = runner.invoke(app, ["regimes", "r"])
    assert table.exit_code == 0 and "regime map" in table.stdout and "Holm" in table.stdout
    assert runner.invoke(app, ["regimes", "nope"]).exit_code == 1
