import json
import os

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from cli_helpers import TINY, TINY_SET, one_line_error
from enstune.cli import app
from enstune.errors import EnstuneError

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.mark.parametrize("columns", ["40", "200"])
def test_templates_lists_whole_names_at_any_width_and_on_a_pipe(monkeypatch, columns):
    from enstune.config import list_templates

    monkeypatch.setenv("COLUMNS", columns)  # CliRunner's output is a pipe, not a terminal
    result = invoke("templates")
    assert result.exit_code == 0
    names = list_templates()
    assert {"starsse-demo", "starsse-swint-sun397", "localde-clip-imagenet", "globalde-byol-cifar100"} <= set(names)
    for name in names:
        assert f" {name} " in result.stdout, name


def test_a_grid_of_one_point_runs_its_trial_and_exits_cleanly():
    sets = ["--set", "members=2", "--set", "finetune.epochs=2", "--set", "space.lr_mult.choices=[4]",
            "--set", "space.epoch_mult.choices=[2]", "--set", 'evaluate=["calibration"]']
    assert invoke("study", "create", "sse-demo", *sets).exit_code == 0
    ran = invoke("study", "run", "sse-demo")
    assert ran.exit_code == 0, ran.output
    (trial,) = json.loads(invoke("study", "show", "sse-demo", "--json").stdout)["trials"]
    assert trial["state"] == "COMPLETE" and trial["params"] == {"lr_mult": 4, "epoch_mult": 2}


def test_create_is_idempotent(home):
    assert invoke("study", "create", "starsse-demo").exit_code == 0
    again = invoke("study", "create", "starsse-demo")
    assert again.exit_code == 0 and "exists" in again.stdout
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    assert optuna.get_all_study_names(storage) == ["starsse-demo"]


def test_create_with_a_different_spec_under_the_same_name_fails():
    assert invoke("study", "create", "starsse-demo").exit_code == 0
    one_line_error(invoke("study", "create", "starsse-demo", "--set", "members=3"), "different spec")


@pytest.mark.parametrize("args, fragment", [
    (["study", "create", "nope"], "unknown template 'nope'"),
    (["study", "create", "starsse-demo", "--set", "space.lr_mult.choices=[0]"], "must be numbers > 0"),
    (["study", "create", "starsse-demo", "--set", "bogus=1"], "unknown key bogus"),
    (["study", "create", "starsse-demo", "--set", "method=nope"], "unknown method 'nope'"),
    (["study", "create", "starsse-demo", "--storage", "redis://u:hunter2@localhost/0"], "unsupported storage"),
    (["study", "create", "starsse-demo", "--storage", "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"],
     "cannot open storage"),
    (["study", "create", "starsse-demo", "--name", " "], "--name must not be empty"),
    (["study", "create", "starsse-demo", "--storage", "sqlite://"], "in-memory SQLite storage"),
    (["study", "create", "starsse-demo", "--storage", "postgresql+psycopg://u@127.0.0.1:1/db?password=hunter2"],
     "cannot open storage"),
    (["recommend", "--dataset", "demo", "--method", "local_de"], "--method must be sse or starsse"),
    (["study", "run", "missing", "--timeout", "-5"], "--timeout must be a number of seconds > 0"),
    (["regimes", "missing", "--band", "-0.5"], "--band must be a finite number >= 0"),
    (["regimes", "missing", "--alpha", "nan"], "--alpha must be in (0, 1)"),
    (["dashboard", "--port", "99999"], "--port must be in 1..65535"),
    (["study", "run", "missing", "--heartbeat", "0"], "--heartbeat must be at least 1 second"),
    (["recommend", "--dataset", " "], "--dataset must name a dataset"),
    (["report", "missing", "--out", "/proc/enstune-report"], "cannot write pictures to /proc/enstune-report"),
    (["study", "create", "starsse-demo", "--storage", "postgresql+psycopg://u:hun@ter2@127.0.0.1:1/db"],
     "percent-encode an '@'"),
    (["study", "run", "missing"], "no study named 'missing'"),
    (["study", "show", "missing"], "no study named 'missing'"),
])
def test_bad_input_is_one_line_and_leaves_no_study(args, fragment, home):
    result = invoke(*args)
    one_line_error(result, fragment)
    assert "hunter2" not in result.output and "ter2" not in result.output
    listed = invoke("study", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_unreachable_storage_masks_the_password_in_env(monkeypatch):
    monkeypatch.setenv("ENSTUNE_STORAGE", "postgresql+psycopg://me:s3cret@127.0.0.1:1/db")
    result = invoke("study", "list")
    one_line_error(result, "postgresql+psycopg://me:***@127.0.0.1:1/db")
    assert "s3cret" not in result.output


def test_cifar_without_data_names_the_directory(home):
    assert invoke("study", "create", "starsse-cifar100").exit_code == 0
    one_line_error(invoke("study", "run", "starsse-cifar100"), str(home / "data" / "cifar-100-python"))


@pytest.mark.parametrize("override, fragment", [
    ('task.checkpoints=["{home}/gone.pth"]', "pre-trained checkpoint not found"),
    ('task.model="no_such_net"', "unknown model 'no_such_net'"),
    ('tap="no_such_layer"', "tap 'no_such_layer' is not a module of demo_mlp"),
])
def test_what_would_fail_every_trial_fails_before_one_is_taken(override, fragment, home):
    assert invoke("study", "create", "sse-mse-demo", *TINY_SET, "--set", override.format(home=home)).exit_code == 0
    one_line_error(invoke("study", "run", "sse-mse-demo"), fragment)
    states = {t["state"] for t in json.loads(invoke("study", "show", "sse-mse-demo", "--json").stdout)["trials"]}
    assert states == {"WAITING"}, "no trial failed or was used up"


def test_bad_devices():
    assert invoke("study", "create", "starsse-demo").exit_code == 0
    one_line_error(invoke("study", "run", "starsse-demo", "--devices", "tpu:0"), "device")


def test_delete_needs_confirmation():
    assert invoke("study", "create", "sse-demo").exit_code == 0
    assert invoke("study", "delete", "sse-demo", input="n\n").exit_code != 0
    assert "sse-demo" in invoke("study", "list").stdout
    assert invoke("study", "delete", "sse-demo", "--yes").exit_code == 0
    assert json.loads(invoke("study", "list", "--json").stdout) == []


def test_end_to_end_study_read_back_with_plain_optuna(home):
    assert invoke("study", "create", "sse-demo", "--name", "tiny", *TINY_SET).exit_code == 0
    result = invoke("study", "run", "tiny")
    assert result.exit_code == 0, result.output
    assert "COMPLETE" in result.stdout

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 3, "the spec's budget, no more"
    assert study.user_attrs["spec"]["members"] == 3
    for t in trials:
        assert t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        assert set(t.params) == {"lr_mult", "epoch_mult"}
        attrs = t.user_attrs
        k = len(attrs["val_ens_acc"])
        assert sorted(t.intermediate_values) == list(range(1, k + 1))
        assert [t.intermediate_values[s] for s in range(1, k + 1)] == attrs["val_ens_acc"]
        for key in ("test_ens_acc", "val_member_acc", "test_member_acc", "member_epochs"):
            assert len(attrs[key]) == k
        assert attrs["val_ens_acc"][0] == attrs["val_member_acc"][0]
        assert all(0.0 <= a <= 1.0 for a in attrs["test_ens_acc"])
        assert attrs["member_epochs"][0] == 3
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert k == 3 and t.value == attrs["val_ens_acc"][-1]
            # the evaluators ran on the completed trial
            assert len(attrs["interp_val_acc"]) == len(attrs["interp_train_acc"]) == 11
            assert attrs["barrier_val"] >= 0 and attrs["barrier_train"] >= 0 and attrs["diversity"] >= 0
            assert 0 < attrs["soup_test_acc"] <= 1 and attrs["greedy_soup_members"][0] >= 1
            assert attrs["test_nll"] > 0 and 0 <= attrs["test_ece"] <= 1
            assert isinstance(attrs["joint_connectivity"], float)
            assert len(attrs["ood_ens_acc_by_severity"]) == 5 and 0 < attrs["ood_ens_acc"] <= 1
        else:
            assert "soup_test_acc" not in attrs
    # member 1 is trained once and shared by every trial
    assert sum(t.user_attrs["cached_members"] for t in trials) == len(trials) - 1

    # a second worker finds the budget used up and leaves the study as it was
    assert invoke("study", "run", "tiny").exit_code == 0
    assert len(optuna.load_study(study_name="tiny", storage=storage).get_trials()) == 3

    shown = invoke("study", "show", "tiny", "--json")
    info = json.loads(shown.stdout)
    assert info["spec"]["method"] == "sse" and len(info["trials"]) == 3


def test_a_mixed_grid_runs_each_method_on_the_axes_it_reads(home):
    mixed = [*TINY, "n_trials=100", "evaluate=[]", 'space.method.choices=["local_de", "sse"]']
    options = [arg for item in mixed for arg in ("--set", item)]
    assert invoke("study", "create", "sse-demo", "--name", "mixed", *options).exit_code == 0
    assert invoke("study", "run", "mixed").exit_code == 0
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    trials = optuna.load_study(study_name="mixed", storage=storage).get_trials()
    by_method = {m: [t.params for t in trials if t.params["method"] == m] for m in ("local_de", "sse")}
    assert by_method["local_de"] == [{"method": "local_de"}], "one Local DE trial, not one per multiplier pair"
    assert sorted((p["lr_mult"], p["epoch_mult"]) for p in by_method["sse"]) == [(0.5, 0.5), (0.5, 1), (2, 0.5), (2, 1)]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)


def test_any_optuna_rdb_url_works(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert invoke("study", "create", "starsse-demo", "--name", "s", "--storage", url, *TINY_SET).exit_code == 0
    assert invoke("study", "run", "s", "--storage", url, "--n-trials", "1").exit_code == 0
    study = optuna.load_study(study_name="s", storage=url)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(done) == 1 and done[0].user_attrs["val_ens_acc"]
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 2  # the rest of the grid


def test_a_failing_trial_reaches_the_user_without_optunas_traceback():
    import logging

    import enstune.study  # noqa: F401  (installs the filter on Optuna's trial log)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)

    def objective(trial):
        raise EnstuneError("the checkpoint went away")

    try:
        with pytest.raises(EnstuneError):
            optuna.create_study().optimize(objective, n_trials=1)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert not [r for r in records if r.exc_info or "failed with" in r.getMessage()]


@pytest.mark.parametrize("args, fragment", [
    (["study", "run", "x", "--bogus-flag"], "No such option: --bogus-flag (see enstune study run --help)"),
    (["study", "run", "x", "--n-trials", "abc"], "Invalid value for '--n-trials'"),
    (["recommend"], "Missing option '--dataset'"),
    (["bogus"], "No such command 'bogus'"),
])
def test_a_wrong_command_line_is_one_line_with_exit_code_2(args, fragment, tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", "from enstune.cli import main; main()", *args], capture_output=True,
                         text=True, env={**os.environ, "ENSTUNE_HOME": str(tmp_path)})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and fragment in run.stderr


def test_dashboard_on_a_taken_port_is_one_line_before_it_announces_itself(home):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = invoke("dashboard", "--port", str(taken.getsockname()[1]))
    one_line_error(result, "cannot listen on 127.0.0.1")
    assert "optuna-dashboard on" not in result.output


@pytest.mark.bare_home
def test_a_runs_directory_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "runs").write_text("not a directory")
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path / "runs"))
    one_line_error(invoke("study", "create", "starsse-demo"), "set ENSTUNE_HOME to a writable directory")
    one_line_error(invoke("storage", "up"), "set ENSTUNE_HOME to a writable directory")
    assert (tmp_path / "runs").read_text() == "not a directory"


def test_a_corrupted_journal_is_one_line_and_left_as_it_is(tmp_path, monkeypatch):
    garbage = bytes(range(128, 256)) * 4 + b"\n" + b"more" * 8 + b"\n"  # whole lines: not a torn last write
    (tmp_path / "studies.journal").write_bytes(garbage)
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path))
    one_line_error(invoke("study", "list"), "is not an Optuna journal")
    one_line_error(invoke("study", "create", "starsse-demo"), "is not an Optuna journal")
    assert (tmp_path / "studies.journal").read_bytes() == garbage


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_dashboard_beyond_loopback_warns_that_it_has_no_authentication(home, host, warned):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = Path(sys.executable).with_name("enstune")
    proc = subprocess.Popen([str(exe), "dashboard", "--host", host, "--port", str(port)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=dict(os.environ))
    try:
        lines = []
        while not lines or not lines[-1].startswith("optuna-dashboard on"):
            lines.append(proc.stderr.readline().strip())
            assert lines[-1] or proc.poll() is None, lines
    finally:
        proc.kill()
        proc.wait()
    assert any("no authentication" in line for line in lines) == warned, lines
