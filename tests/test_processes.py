"""Members in processes: one per device, and one member over two gloo ranks as DistributedDataParallel."""

from __future__ import annotations

import dataclasses
import os
import signal

import optuna
import pytest
import torch

from enstune.config import load_template
from enstune.errors import DivergedError, EnstuneError
from enstune.executor import parse_devices
from enstune.members import Workspace
from enstune.methods import get_method
from enstune.processes import Group, device_groups
from enstune.study import trial_config

CPU = torch.device("cpu")


@pytest.fixture
def ws(home):
    return Workspace(load_template("starsse-demo", []).task, home)


def _first(ws: Workspace, **recipe):
    spec = load_template("starsse-demo", [])
    cfg = trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 1}), spec)
    job = get_method("starsse").plan(cfg)[0]
    return dataclasses.replace(job, recipe=dataclasses.replace(job.recipe, **recipe))


@pytest.mark.slow
def test_a_ddp_member_on_two_ranks_equals_its_one_process_twin_after_a_failed_one(ws, home):
    # The network's BatchNorm layers frozen (eval mode), so that nothing but the split of each batch
    # differs: 45-example batches of the 99 training examples give shares of 23 and 22, then 5 and 4,
    # so the loss weighting of unequal shares is exercised.
    stages = len(ws.checkpoints.backbone(0).feature_info)
    job = dataclasses.replace(_first(ws, batch_size=45, epochs=20), freeze=stages)
    assert len(ws.data.train) == 99
    one = ws.train("k", job, None, CPU)
    group = Group([CPU, CPU], (ws.task, home, None), threads=1)
    epochs = []
    try:
        with pytest.raises(DivergedError):  # the same error type as in one process: the trial is pruned as diverged
            group.train("k", _first(ws, lr=1e12, epochs=2), None, CPU)
        # the group stopped on the error (a rank may wait in a collective) and starts again
        two = group.train("k", job, None, CPU, on_epoch=lambda e, n, loss: epochs.append(e))
        ranks = list(group._procs)
        os.kill(ranks[1].pid, signal.SIGSTOP)  # a rank that answers nothing, as one stuck in a collective would
    finally:
        group.close()
    alive = [rank for rank in ranks if rank.is_alive()]
    for rank in alive:
        rank.kill()  # or the test run would wait for it at exit
    assert not alive, "closing the group ends a rank that does not leave"
    assert epochs == list(range(1, 21)), "rank 0 reports every epoch"
    assert two.epochs == one.epochs == 20
    moved = max((one.state[k] - ws.checkpoints.backbone(0).state_dict()[k]).abs().max().item()
                for k in one.state if k.startswith("head."))
    for k, v in one.state.items():
        assert torch.allclose(two.state[k].float(), v.float(), atol=1e-5, rtol=1e-4), k
    assert moved > 100 * 1e-5, "the head moved far more than the tolerance"
    assert torch.allclose(two.val_probs, one.val_probs, atol=1e-5)
    assert torch.allclose(two.test_probs, one.test_probs, atol=1e-5)


def test_devices_and_groups_are_checked():
    assert parse_devices("cpu,cpu") == [CPU, CPU]
    if not torch.cuda.is_available():
        assert parse_devices("auto") == [CPU]
    assert device_groups([CPU, CPU, CPU, CPU], 2) == [[CPU, CPU], [CPU, CPU]]
    for devices, per in (([CPU, CPU, CPU], 2), ([CPU], 0)):
        with pytest.raises(EnstuneError):
            device_groups(devices, per)
    with pytest.raises(EnstuneError, match="one kind of device"):
        device_groups([CPU, torch.device("cuda", 0)], 2)


@pytest.mark.slow
def test_a_study_runs_with_a_process_per_device_and_with_members_over_two_ranks(home, tmp_path):
    from typer.testing import CliRunner

    from cli_helpers import TINY_SET
    from enstune.cli import app

    runner = CliRunner()
    values = {}
    for name, devices in (("here", ["--devices", "cpu"]), ("procs", ["--devices", "cpu,cpu"]),
                          ("ddp", ["--devices", "cpu,cpu", "--per-member", "2"])):
        create = ["study", "create", "starsse-demo", "--name", name, *TINY_SET, "--set", "pruner='none'",
                  "--set", "evaluate=[]"]  # the members, not the evaluators, are under test
        assert runner.invoke(app, create).exit_code == 0
        # each its own member cache: nothing is taken from another run
        done = runner.invoke(app, ["study", "run", name, *devices, "--artifacts", str(tmp_path / name)])
        assert done.exit_code == 0, done.output
        study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(home / "studies.journal"))))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
        values[name] = {tuple(sorted(t.params.items())): t.value for t in study.trials}
    # The same code in another process, on the same number of threads: the same members, bit for bit.
    assert values["procs"] == values["here"]
    # Over two ranks each batch is split, and BatchNorm sees half of it: close, not equal.
    for point, value in values["here"].items():
        assert abs(values["ddp"][point] - value) < 0.1, point


def test_bad_per_member_is_one_line(home):
    from typer.testing import CliRunner

    from cli_helpers import TINY_SET
    from enstune.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", *TINY_SET]).exit_code == 0
    small = ["study", "create", "starsse-demo", "--name", "small", *TINY_SET, "--set", "finetune.batch_size=3"]
    assert runner.invoke(app, small).exit_code == 0
    for name, args, fragment in (
            ("starsse-demo", ["--devices", "cpu,cpu,cpu", "--per-member", "2"], "does not divide"),
            ("starsse-demo", ["--per-member", "0"], "at least 1"),
            # each of two processes needs two examples of a batch of three: refused before a trial is taken
            ("small", ["--devices", "cpu,cpu", "--per-member", "2"], "batch_size 3 is below 4")):
        bad = runner.invoke(app, ["study", "run", name, *args])
        assert bad.exit_code == 1 and fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    small_trials = optuna.load_study(study_name="small", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "studies.journal")))).trials
    assert all(t.state.name == "WAITING" for t in small_trials)
