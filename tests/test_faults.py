"""Faults lose nothing: bad input refused in one line, retries counted only for a trial's own errors,
dead claim holders taken over, a damaged journal read on, storage that is down waited for."""

from __future__ import annotations

import dataclasses
import time

import optuna
import pytest
import torch
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune.cli import app

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, fragment", [
    ("a/b", "'/' or '..'"), ("..", "'/' or '..'"), ("up..there", "'/' or '..'"),
    ("two\nlines", "control character"), ("bell\x07", "control character"), ("tab\there", "control character"),
    ("x.member-claims", "names the member claims"), ("n" * 513, "at most 512"),
])
def test_bad_study_names_are_refused_at_create_in_one_line(home, name, fragment):
    result = CliRunner().invoke(app, ["study", "create", "starsse-demo", "--name", name, *TINY_SET])
    assert result.exit_code == 1 and fragment in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (home / "studies.journal").exists() or optuna.get_all_study_names(
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(home / "studies.journal")))) == []


def test_a_name_of_512_characters_is_kept(home):
    result = CliRunner().invoke(app, ["study", "create", "starsse-demo", "--name", "n" * 512, *TINY_SET])
    assert result.exit_code == 0, result.output


def test_an_empty_device_in_the_list_is_refused_and_auto_without_a_gpu_says_so(home):
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "dev", *TINY_SET]).exit_code == 0
    bad = runner.invoke(app, ["study", "run", "dev", "--devices", "cpu,,cpu"])
    assert bad.exit_code == 1 and "has an empty entry" in bad.stderr, bad.output
    assert len(bad.stderr.strip().splitlines()) == 1
    if torch.cuda.is_available():
        return
    auto = runner.invoke(app, ["study", "run", "dev", "--devices", "auto", "--n-trials", "0"])
    assert auto.exit_code == 0, auto.output
    assert "this machine has no GPU; training on the CPU" in auto.stderr, auto.stderr


@pytest.mark.parametrize("interval", [0, -1])
def test_a_heartbeat_interval_below_one_is_refused_by_every_heartbeat_storage(home, interval):
    from optuna.storages.journal import JournalFileBackend

    from enstune.storage.heartbeat import HeartbeatJournalStorage
    from enstune.storage.proxy import HeartbeatProxyStorage

    with pytest.raises(ValueError, match="heartbeat_interval"):
        optuna.storages.RDBStorage("sqlite:///" + str(home / "x.db"), heartbeat_interval=interval)
    home.mkdir(parents=True, exist_ok=True)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        HeartbeatJournalStorage(JournalFileBackend(str(home / "j.journal")), interval)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        HeartbeatProxyStorage("127.0.0.1", 1, "grpc://127.0.0.1:1", interval)


def test_a_ddp_members_train_seconds_are_its_wall_time_process_start_included(home):
    from enstune.config import load_template
    from enstune.members import Workspace
    from enstune.methods import get_method
    from enstune.processes import Group
    from enstune.study import trial_config

    spec = load_template("starsse-demo", [])
    ws = Workspace(spec.task, home)
    job = get_method("starsse").plan(trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 1}), spec))[0]
    job = dataclasses.replace(job, recipe=dataclasses.replace(job.recipe, epochs=2))
    group = Group([CPU, CPU], (ws.task, home, None), threads=1)
    try:
        start = time.perf_counter()
        result = group.train("k", job, None, CPU)
        wall = time.perf_counter() - start
    finally:
        group.close()
    # the ranks' start (spawn, imports, the task's data) is most of it: counted
    assert wall * 0.95 <= result.seconds <= wall, (result.seconds, wall)
