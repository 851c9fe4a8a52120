"""Recommendations: own studies first, then the paper's Table 3, then pooled optima; enqueue into a study."""

import json

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from cli_helpers import TINY, TINY_SET
from enstune import study as st
from enstune.cli import app
from enstune.errors import EnstuneError
from enstune.recommend import Optimum, Proposal, enqueue, paper_optima, rank


def test_paper_table_3_is_encoded():
    star = {(o.dataset, o.source.split("(")[1].split(",")[0]): (o.lr_mult, o.epoch_mult)
            for o in paper_optima() if o.method == "starsse"}
    assert star[("cifar100", "SV ResNet-50")] == (4, 1)
    assert star[("sun397", "SV Swin-T")] == (16, 0.25)
    assert len(paper_optima()) == 26


def test_own_studies_first_then_the_paper_then_votes_elsewhere():
    known = [
        Optimum("flowers", "starsse", 2, 1, "study a", 0.80),
        Optimum("flowers", "starsse", 8, 0.5, "study b", 0.85),
        Optimum("flowers", "starsse", 1, 1, "paper x"),
        Optimum("cars", "starsse", 4, 0.5, "c1"), Optimum("pets", "starsse", 4, 0.5, "c2"),
        Optimum("cars", "starsse", 32, 4, "c3"),
        Optimum("flowers", "sse", 16, 4, "another method"),
    ]
    ranked = rank("flowers", "starsse", known)
    assert [(p.lr_mult, p.epoch_mult) for p in ranked] == [(8, 0.5), (2, 1), (1, 1), (4, 0.5), (32, 4)]
    assert ranked[0].tier == "this dataset, own studies" and ranked[2].tier == "this dataset, paper"
    assert ranked[3].sources == ["c1", "c2"], "two votes beat one"
    assert all("another method" not in p.sources for p in ranked)


def test_enqueue_admits_what_the_search_space_allows(home):
    st.create("starsse-demo", name="tpe", overrides=TINY + ["sampler='tpe'"])
    proposals = [Proposal(2, 1, "x"), Proposal(16, 1, "x")]  # lr_mult 16 is outside [0.5, 2]
    assert [p.lr_mult for p in enqueue("tpe", proposals, "starsse")] == [2]
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    waiting = optuna.load_study(study_name="tpe", storage=storage).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"lr_mult": 2, "epoch_mult": 1}]
    with pytest.raises(EnstuneError, match="runs starsse, not sse"):
        enqueue("tpe", proposals, "sse")
    st.create("starsse-demo", name="grid", overrides=TINY)
    with pytest.raises(Exception, match="grid"):
        enqueue("grid", proposals, "starsse")


def test_enqueue_into_a_study_of_several_methods_names_the_method(home):
    mixed = ["sampler='tpe'", 'space.method.choices=["local_de", "sse"]']
    st.create("starsse-demo", name="mixed", overrides=TINY + mixed)
    assert len(enqueue("mixed", [Proposal(2, 1, "x")], "sse")) == 1
    study = optuna.load_study(study_name="mixed", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(home / "studies.journal"))))
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in queued] == [{"method": "sse", "lr_mult": 2, "epoch_mult": 1}]


def test_recommend_command_uses_finished_studies(home):
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "done", *TINY_SET]).exit_code == 0
    assert runner.invoke(app, ["study", "run", "done"]).exit_code == 0
    result = runner.invoke(app, ["recommend", "--dataset", "demo", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)["proposals"][0]
    assert first["tier"] == "this dataset, own studies" and "study done" in first["sources"][0]
    assert runner.invoke(app, ["recommend", "--dataset", "demo", "--method", "nope"]).exit_code == 1


def test_recommend_enqueue_says_how_many_proposals_the_study_took(home):
    runner = CliRunner()
    created = runner.invoke(app, ["study", "create", "starsse-demo", "--name", "tpe", *TINY_SET,
                                  "--set", "sampler=tpe"])
    assert created.exit_code == 0, created.output
    # cifar10: the paper's two optima (lr_mult 2) fit the space, the third proposal (lr_mult 4) does not.
    some = runner.invoke(app, ["recommend", "--dataset", "cifar10", "--top", "3", "--enqueue", "tpe"])
    assert some.exit_code == 0, some.output
    assert some.stdout.splitlines()[-1] == "queued 2 of 3 in study tpe (the others are outside its search space)"
    every = runner.invoke(app, ["recommend", "--dataset", "cifar10", "--top", "2", "--enqueue", "tpe", "--json"])
    assert [p["lr_mult"] for p in json.loads(every.stdout)["enqueued"]] == [2.0, 2.0]
    every = runner.invoke(app, ["recommend", "--dataset", "cifar10", "--top", "2", "--enqueue", "tpe"])
    assert every.stdout.splitlines()[-1] == "queued 2 in study tpe"


def test_folder_datasets_are_told_apart_by_their_folder_and_an_unknown_one_says_so(home):
    from enstune.config import load_template, to_dict
    from enstune.data import dataset_label
    from enstune.storage import open_storage

    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "done", *TINY_SET]).exit_code == 0
    assert runner.invoke(app, ["study", "run", "done"]).exit_code == 0
    storage = open_storage(None)
    finished = optuna.load_study(study_name="done", storage=storage).get_trials()
    for folder in ("pets", "cars"):  # the same evidence, as two studies on two trees of class folders
        spec = load_template("starsse-demo", [*TINY, "task.dataset=imagefolder", f"task.data_dir=/data/{folder}/"])
        assert dataset_label(spec.task) == folder
        study = optuna.create_study(study_name=folder, storage=storage, direction="maximize")
        study.add_trials(finished)
        study.set_user_attr("spec", to_dict(spec))
    pets = json.loads(runner.invoke(app, ["recommend", "--dataset", "pets", "--json"]).stdout)
    assert pets["known"] and pets["proposals"][0]["tier"] == "this dataset, own studies"
    assert pets["proposals"][0]["sources"][0].startswith("study pets")
    from enstune.recommend import study_optima
    assert {o.dataset for o in study_optima()} == {"demo", "pets", "cars"}
    nope = runner.invoke(app, ["recommend", "--dataset", "nope", "--json"])
    assert nope.exit_code == 0 and not json.loads(nope.stdout)["known"]
    (line,) = nope.stderr.strip().splitlines()
    assert line.startswith("note: nothing is known of dataset 'nope'") and "cars" in line and "pets" in line
    known = runner.invoke(app, ["recommend", "--dataset", "cifar100"])
    assert "nothing is known" not in known.stderr
