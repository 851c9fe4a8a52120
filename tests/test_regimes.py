"""Regime rules on synthetic trial records: each label, ties, the paired noise band, thresholds."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune.cli import app
from enstune.evaluation import pack_correct, unpack_correct
from enstune.regimes import Thresholds, classify, paired_se


def _correct(bits: str) -> str:
    labels = torch.zeros(len(bits), dtype=torch.long)
    probs = torch.tensor([[1.0, 0.0] if b == "1" else [0.0, 1.0] for b in bits])
    return pack_correct(probs, labels)


def row(number, acc_bits, members=(0.8, 0.8), diversity=50.0, barrier=0.0, lr=1, ep=1, state="COMPLETE"):
    acc = acc_bits.count("1") / len(acc_bits)
    return {"number": number, "state": state, "params": {"lr_mult": lr, "epoch_mult": ep},
            "user_attrs": {"val_ens_acc": [members[0], acc], "val_member_acc": list(members),
                           "diversity": diversity, "barrier_train": barrier, "barrier_val": 0.0,
                           "val_correct": _correct(acc_bits)}}


def test_pack_correct_round_trips():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.4]])
    packed = pack_correct(probs, torch.tensor([0, 0, 0, 1, 1]))
    assert unpack_correct(packed) == [True, False, True, True, False]


def test_paired_standard_error_by_hand():
    a = [True] * 6 + [False] * 4
    b = [True] * 4 + [False] * 2 + [True] * 1 + [False] * 3  # only a: 2, only b: 1
    assert paired_se(a, b) == pytest.approx(math.sqrt(2 + 1) / 10)
    assert paired_se(a, a) == 0.0


BEST = "1" * 80 + "0" * 20


def test_each_label_with_its_evidence():
    rows = [
        row(0, BEST, diversity=60),
        row(1, "1" * 70 + "0" * 30, diversity=30),                       # clearly worse, in the basin
        row(2, "1" * 70 + "0" * 30, diversity=30, barrier=0.2),          # a barrier: left the basin
        row(3, "1" * 70 + "0" * 30, members=(0.8, 0.6), diversity=30),   # members degrade
        row(4, "1" * 70 + "0" * 30, diversity=90),                       # more diverse than the optimum
        row(5, "1" * 79 + "0" * 21, diversity=40),                       # one image from the best
        row(6, BEST, state="PRUNED"),
    ]
    labels = {g.number: g.label for g in classify(rows, "starsse")}
    assert labels == {0: "optimal", 1: "more-local", 2: "semi-local", 3: "semi-local", 4: "semi-local",
                      5: "optimal"}
    by = {g.number: g for g in classify(rows, "starsse")}
    assert by[3].degradation == pytest.approx(0.2) and by[2].barrier == pytest.approx(0.2)
    assert "barrier" in by[2].reason and "member 1" in by[3].reason and "diversity" in by[4].reason
    assert {n: g.rule for n, g in by.items()} == {0: "accuracy", 1: "in-basin", 2: "barrier", 3: "degradation",
                                                  4: "diversity", 5: "accuracy"}


def test_basin_evidence_wins_over_diversity():
    rows = [row(0, BEST, diversity=60), row(1, "1" * 70 + "0" * 30, diversity=90, barrier=0.2),
            row(2, "1" * 70 + "0" * 30, members=(0.8, 0.6), diversity=90)]
    assert [g.rule for g in classify(rows, "starsse")] == ["accuracy", "barrier", "degradation"]


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
    assert [g.label for g in classify(rows, "sse", Thresholds(z=3.0))] == ["optimal", "optimal"]


def test_regimes_command_on_a_real_study(home):
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "r", *TINY_SET]).exit_code == 0
    assert runner.invoke(app, ["study", "run", "r"]).exit_code == 0
    shown = runner.invoke(app, ["regimes", "r", "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["thresholds"]["z"] == 1.0 and info["trials"]
    assert {t["label"] for t in info["trials"]} <= {"more-local", "optimal", "semi-local"}
    assert "optimal" in {t["label"] for t in info["trials"]}
    table = runner.invoke(app, ["regimes", "r"])
    assert table.exit_code == 0 and "regime map" in table.stdout
    assert runner.invoke(app, ["regimes", "nope"]).exit_code == 1
