"""A shared PostgreSQL store: concurrent creators, dead workers, a restarted database, bad URLs."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import reachable_tmpdir
from enstune.cli import app
from enstune.objective import Objective
from enstune.progress import Reporter

ENSTUNE = str(Path(sys.executable).parent / "enstune")
SECRET = "hunter2-Zq9"
# Members of a few seconds each on the demo MLP (200 epochs: about 2.5 s on one thread), so that a worker can be
# caught inside one; evaluation beyond the value the study optimizes is none of these tests' business.
SLOW = ["members=3", "finetune.epochs=200", "space.lr_mult.choices=[0.5, 1, 2]", "space.epoch_mult.choices=[1]",
        "n_trials=3", "pruner='none'", 'evaluate=["calibration"]']


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``enstune ARGS`` as a separate process (a worker on another machine, as far as it knows)."""
    return subprocess.Popen([ENSTUNE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def wait_all(procs: list[subprocess.Popen[str]], timeout: float = 300) -> list[tuple[int, str, str]]:
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        results.append((p.returncode, stdout, stderr))
    return results


# A trial as cheap as a trial gets: two parameters sampled, three values reported, nothing trained.
CHEAP = ["sampler='random'", "pruner='none'", "members=3", "space.lr_mult.choices=[0.5, 2]",
         "space.epoch_mult.choices=[0.5, 1]", "heartbeat=60"]
RESULTS = ("val_ens_acc", "test_ens_acc", "val_member_acc", "test_member_acc", "member_epochs", "train_seconds",
           "cached_members", "member_keys", "trained_members", "val_correct", "val_size", "input_size")


def cheap_values(trial: optuna.Trial) -> list[float]:
    """The cheap trial's three values, reported (the parameters sampled as a study of CHEAP samples them)."""
    lr, ep = trial.suggest_categorical("lr_mult", [0.5, 2]), trial.suggest_categorical("epoch_mult", [0.5, 1])
    values = [1 / (1 + lr * ep / k) for k in (1, 2, 3)]
    for k, v in enumerate(values, 1):
        trial.report(v, step=k)
    return values


class Cheap(Objective):
    """The worker's objective (admission, outcome) with the cheap trial in place of training, its results written."""

    def __init__(self, spec: Any, prune: int | None = None) -> None:
        super().__init__(spec, None, None, Reporter())  # type: ignore[arg-type] - nothing is trained
        self.prune = prune  # the trial number pruned after its reports, if any

    def run(self, trial: optuna.Trial, retry: bool) -> float:
        values = cheap_values(trial)
        self.record(trial, dict.fromkeys(RESULTS, values))
        if trial.number == self.prune:
            raise optuna.TrialPruned()
        return values[-1]


@contextlib.contextmanager
def transactions(storage: Any) -> Iterator[list[int]]:
    """Within: ``[n]``, the transactions a database storage (under Optuna's cache or not) has begun so far."""
    from enstune.storage.bulk import native

    engine, begun = native(storage).engine, [0]

    def count(_connection: Any) -> None:
        begun[0] += 1

    sqlalchemy.event.listen(engine, "begin", count)
    try:
        yield begun
    finally:
        sqlalchemy.event.remove(engine, "begin", count)


def plain_and_enstune(plain_storage: Any, enstune_storage: Any, name: str, trials: int,
                      counted: Any = None) -> tuple[float, float]:
    """Database transactions per trial: plain Optuna's, then enstune's worker's.

    The same cheap trial: plain Optuna's ``optimize`` on ``plain_storage``, enstune's worker loop on
    ``enstune_storage`` (with heartbeats) in study ``name`` (created with CHEAP and ``trials`` trials).
    Counted on ``counted`` (the database behind a proxy), else on each one's own storage.
    """
    from enstune import study as st
    from enstune.pruning import make_pruner, make_sampler
    from enstune.worker import work

    plain = optuna.create_study(study_name=f"{name}-plain", storage=plain_storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    with transactions(counted or plain_storage) as begun:
        plain.optimize(lambda t: cheap_values(t)[-1], n_trials=trials)
    per_plain = begun[0] / trials
    spec = st.load_spec(st._load(name, enstune_storage))
    study = optuna.load_study(study_name=name, storage=enstune_storage, sampler=make_sampler(spec),
                              pruner=make_pruner(spec))
    with transactions(counted or enstune_storage) as begun:
        assert work(study, spec, Cheap(spec), Reporter()) == trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * trials
    assert all(t.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}" for t in study.trials)
    return per_plain, begun[0] / trials


def test_storage_commands_start_reuse_and_stop_a_local_cluster(monkeypatch):
    home = reachable_tmpdir("enstune-up-")
    monkeypatch.setenv("ENSTUNE_HOME", str(home))
    runner = CliRunner()
    first = runner.invoke(app, ["storage", "up"])
    assert first.exit_code == 0, first.output
    url = first.stdout.strip()
    assert url.startswith("postgresql+psycopg://") and "127.0.0.1" in url
    assert runner.invoke(app, ["storage", "up"]).stdout.strip() == url  # idempotent
    assert runner.invoke(app, ["storage", "url"]).stdout.strip() == url
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--storage", url]).exit_code == 0

    stopped = runner.invoke(app, ["storage", "down"])
    assert stopped.exit_code == 0 and stopped.stdout.strip() == "local PostgreSQL stopped"
    assert runner.invoke(app, ["storage", "down"]).stdout.strip() == "no local PostgreSQL was running"
    gone = runner.invoke(app, ["storage", "url"])
    assert gone.exit_code == 1 and "storage up" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1

    # data survive a restart unless purged
    assert runner.invoke(app, ["storage", "up"]).stdout.strip() == url
    assert optuna.get_all_study_names(url) == ["starsse-demo"]
    assert runner.invoke(app, ["storage", "down", "--purge"]).exit_code == 0
    assert not (home / "postgres").exists()


@pytest.mark.slow
def test_concurrent_creates_make_one_study_with_its_grid_queued_once(pg):
    url = pg.url()
    procs = [cli("study", "create", "starsse-demo", "--name", "race", "--storage", url) for _ in range(4)]
    results = wait_all(procs, timeout=120)
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    verbs = sorted(out.split()[2] for _, out, _ in results)
    assert verbs == ["created"] + ["exists"] * 3
    assert optuna.get_all_study_names(url).count("race") == 1
    queued = trials(url, "race")
    assert len(queued) == 16 and all(t.state == TrialState.WAITING for t in queued)
    assert len({tuple(sorted(t.system_attrs["fixed_params"].items())) for t in queued}) == 16


def test_trial_counts_on_the_database_match_the_trials_themselves(pg, home):
    from enstune import study as st
    from enstune.storage import open_storage

    url = pg.url()
    st.create("starsse-demo", name="counts", storage_url=url, overrides=["n_trials=6"])
    study = optuna.load_study(study_name="counts", storage=open_storage(url))
    spec = st.load_spec(study)
    assert st.census(study) == st.Census(collections.Counter({TrialState.WAITING: 6}), None)
    running = [study.ask() for _ in range(3)]  # three of the six queued points taken
    study.tell(running[0], 0.5)
    study.tell(running[1], state=TrialState.FAIL)
    for below in (None, 2, 6):
        by_hand = [t.state for t in study.get_trials() if below is None or t.number < below]
        assert st.trial_states(study, below) == {s: by_hand.count(s) for s in set(by_hand)}
    assert st.trial_states(study)[TrialState.WAITING] == 3
    from enstune.worker import _open_trials

    import dataclasses

    assert _open_trials(study, spec) == (3, 1), "a grid study draws only from its queue: three queued points"
    tpe = dataclasses.replace(spec, sampler="tpe")
    assert _open_trials(study, tpe) == (3 + 1, 1), "three queued, one trial's worth of budget back from the FAIL"

    pruned = study.ask()
    pruned.report(0.9, step=1)
    study.tell(pruned, state=TrialState.PRUNED)  # its value is 0.9, yet a pruned trial is never the best
    study.tell(running[2], 0.75)
    assert st.census(study).best == 0.75 == study.best_value
    assert st.census(study, below=2).best == 0.5


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_trials_attributes_are_written_together_and_never_after_it_ends(kind, pg, tmp_path):
    from enstune.storage import open_storage
    from enstune.study import set_user_attrs

    url = pg.url() if kind == "postgresql" else f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name=f"attrs-{kind}", storage=open_storage(url))
    trial = study.ask()
    trial.set_user_attr("worker", "w:1")
    set_user_attrs(trial, {"worker": "w:2", "val_ens_acc": [0.5, 0.75], "diverged": False})
    study.tell(trial, 0.75)
    # read back by a plain Optuna client
    assert optuna.load_study(study_name=f"attrs-{kind}", storage=url).trials[0].user_attrs == {
        "worker": "w:2", "val_ens_acc": [0.5, 0.75], "diverged": False}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"late": 1})


def test_a_workers_trial_costs_the_database_at_most_three_transactions_more_than_plain_optunas(pg, home):
    from enstune import study as st
    from enstune.storage import open_storage

    url = pg.url()
    st.create("starsse-demo", name="cost", storage_url=url, overrides=CHEAP + ["n_trials=6"])
    plain, enstune = plain_and_enstune(optuna.storages.get_storage(url), open_storage(url, heartbeat=60), "cost", 6)
    # The heartbeat (naming the worker) and the results (with the census the next trial starts from):
    # two; the first census and stale-trial check are shared by the six trials.
    assert enstune - plain <= 3, (plain, enstune)


def test_a_heartbeat_is_one_transaction_that_names_the_worker_and_silent_trials_fail_on_time(pg, home):
    from enstune.storage import open_storage
    from enstune.storage.heartbeat import HEARTBEAT_ATTR

    storage = open_storage(pg.url(), heartbeat=1)
    study = optuna.create_study(study_name="beats-db", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # asked for outside optimize, which would beat for them
        beating, silent = study.ask(), study.ask()
    for _ in range(2):
        with transactions(storage) as begun:
            storage.record_heartbeat(beating._trial_id)
        assert begun[0] == 1
    trial = storage.get_trial(beating._trial_id)
    assert trial.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert trial.system_attrs[HEARTBEAT_ATTR]["pid"] == os.getpid()
    with psycopg.connect(pg.url().replace("postgresql+psycopg", "postgresql")) as c:
        (rows,) = c.execute("SELECT count(*) FROM trial_heartbeats WHERE trial_id = %s",
                            (beating._trial_id,)).fetchone()
    assert rows == 1, "the beat is in Optuna's table too"

    beaten = time.monotonic()
    assert storage._get_stale_trial_ids(study._study_id) == []  # the silent one never beat: never stale here
    with transactions(storage) as begun:
        assert storage._get_stale_trial_ids(study._study_id) == []
    assert begun[0] == 0, "no trial can have been silent for two intervals yet: nothing to read"
    while (storage._get_stale_trial_ids(study._study_id) == []) and time.monotonic() - beaten < 10:
        time.sleep(0.05)
    # failed by the first check two intervals after its last beat, as a check before every trial would
    assert 1.9 <= time.monotonic() - beaten < 4
    assert storage._get_stale_trial_ids(study._study_id) == [beating._trial_id], "found again until failed"
    assert silent._trial_id not in storage._get_stale_trial_ids(study._study_id)


def test_a_sampled_trial_is_admitted_without_a_count_while_the_budget_has_room(pg, home):
    from enstune import study as st
    from enstune.objective import OverBudget, _admit
    from enstune.storage import open_storage

    url = pg.url()
    st.create("starsse-demo", name="admit", storage_url=url, overrides=CHEAP + ["n_trials=2"])
    storage = open_storage(url)
    study = optuna.load_study(study_name="admit", storage=storage)
    spec = st.load_spec(study)
    seen = st.census(study).states  # what a worker counted before asking for its trial
    first, second, third = study.ask(), study.ask(), study.ask()  # two more asked for by other workers meanwhile
    with transactions(storage) as begun:
        _admit(first, spec, seen)
        _admit(second, spec, seen)
    assert begun[0] == 0, "two trials cannot spend a budget of two with a third"
    with transactions(storage) as begun, pytest.raises(OverBudget):
        _admit(third, spec, seen)
    assert begun[0] >= 1, "counted once the bound no longer proves room"
    study.tell(second, state=TrialState.FAIL)
    study.tell(third, state=TrialState.FAIL)
    seen = st.census(study).states
    fourth = study.ask()  # in place of the failed ones
    with transactions(storage) as begun:
        _admit(fourth, spec, seen)
    assert begun[0] == 0


def test_the_worker_reports_each_trial_with_the_studys_best(home):
    from enstune import study as st
    from enstune.storage import open_storage
    from enstune.pruning import make_pruner, make_sampler
    from enstune.worker import work

    class Recorder(Reporter):
        def __init__(self) -> None:
            self.done: list[tuple[str, float | None, float | None]] = []

        def trial_done(self, state: str, value: float | None, best: float | None) -> None:
            self.done.append((state, value, best))

    st.create("starsse-demo", name="told", overrides=CHEAP + ["n_trials=3"])
    storage = open_storage(None, heartbeat=60)
    spec = st.load_spec(st._load("told", storage))
    study = optuna.load_study(study_name="told", storage=storage, sampler=make_sampler(spec),
                              pruner=make_pruner(spec))
    reporter = Recorder()
    assert work(study, spec, Cheap(spec, prune=1), reporter) == 3
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    best = [trials[0].value, trials[0].value, max(trials[0].value, trials[2].value)]
    assert reporter.done == [(t.state.name, t.value, b) for t, b in zip(trials, best)]
    assert trials[1].value == trials[1].intermediate_values[3], "a pruned trial is reported with Optuna's value"


@pytest.mark.slow
def test_three_workers_one_killed_mid_member_nothing_lost(pg, home):
    from enstune import study as st

    url = pg.url()
    env = {"ENSTUNE_STORAGE": url, "ENSTUNE_HOME": str(home)}
    st.create("starsse-demo", name="kill", storage_url=url, overrides=SLOW + ["heartbeat=1"])  # the workers are the test
    workers = [cli("study", "run", "kill", env=env) for _ in range(3)]
    by_pid = {p.pid: p for p in workers}

    victim, done_members = None, 0
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline:
        for t in trials(url, "kill"):
            a = t.user_attrs
            # two members reported: the worker is now inside member 3
            if t.state == TrialState.RUNNING and len(t.intermediate_values) == 2 and "worker" in a:
                pid = int(a["worker"].rsplit(":", 1)[1])
                if pid in by_pid:
                    by_pid[pid].send_signal(signal.SIGKILL)
                    victim, done_members = t.number, 2
                    break
        time.sleep(0.05)
    assert victim is not None, "no worker was caught inside a member"

    results = wait_all([p for p in workers if p.pid != pid])
    assert all(rc == 0 for rc, _, _ in results), [err[-500:] for _, _, err in results]
    everything = trials(url, "kill")
    states = {t.number: t.state for t in everything}
    assert TrialState.RUNNING not in states.values() and TrialState.WAITING not in states.values()
    assert states[victim] == TrialState.FAIL
    assert [t.state for t in everything if t.state != TrialState.FAIL].count(TrialState.COMPLETE) == 3
    (retry,) = [t for t in everything if t.system_attrs.get("failed_trial") == victim]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_member"] == done_members + 1
    # members 1 and 2 came from the artifact store: member 1 was not trained again
    assert retry.user_attrs["cached_members"] == done_members
    assert retry.params == everything[victim].params


@pytest.mark.slow
def test_workers_ride_out_a_database_restart(pg, home):
    from enstune import study as st

    url = pg.url()
    env = {"ENSTUNE_STORAGE": url, "ENSTUNE_HOME": str(home)}
    quick = SLOW + ["n_trials=2", "space.lr_mult.choices=[0.5, 2]", "heartbeat=5"]
    st.create("starsse-demo", name="restart", storage_url=url, overrides=quick)
    workers = [cli("study", "run", "restart", env=env) for _ in range(2)]
    deadline = time.monotonic() + 240
    while not any(t.intermediate_values for t in trials(url, "restart")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pg.down()
    time.sleep(6)  # longer than a heartbeat interval: the running trial's heartbeat meets the database away
    assert pg.up() == url
    results = wait_all(workers)
    assert all(rc == 0 for rc, _, _ in results), [err[-500:] for _, _, err in results]
    # They did see the database go away: a call waited it out, or a heartbeat went unrecorded and beat again.
    assert any("retrying" in err or "not recorded" in err for _, _, err in results), [e[-500:] for _, _, e in results]
    everything = trials(url, "restart")
    assert [t.state for t in everything].count(TrialState.COMPLETE) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in everything)


@pytest.fixture()
def password_url(pg):
    """A role that must log in with a password; returns a URL with the wrong one."""
    port = pg.url().split(":")[-1].split("/")[0]
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'alice'").fetchone() is None:
            c.execute("CREATE ROLE alice LOGIN PASSWORD 'right-one'")
        hba = Path(c.execute("SHOW hba_file").fetchone()[0])
        if "alice" not in hba.read_text():
            hba.write_text("host all alice 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        c.execute("SELECT pg_reload_conf()")
    return f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:{port}/enstune"


@pytest.mark.parametrize("kind", ["scheme", "unreachable", "password"])
def test_bad_storage_urls_are_one_line_without_the_password(kind, request):
    url = {
        "scheme": f"redis://alice:{SECRET}@127.0.0.1:6379/0",
        "unreachable": f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:1/enstune",
        "password": request.getfixturevalue("password_url") if kind == "password" else "",
    }[kind]
    # a worker waits for a storage that is down; not asked to, it says so at once like the others
    for args in (["study", "list"], ["study", "run", "x", "--wait-storage", "0"], ["study", "create", "starsse-demo"]):
        result = CliRunner().invoke(app, [*args, "--storage", url])
        assert result.exit_code == 1
        assert SECRET not in result.stdout + result.stderr
        assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "***" in result.stderr


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://u:s3cr3t@db.example/enstune",
    "postgresql+psycopg://u:s3@cr3t@db.example:5432/enstune",  # a raw "@" in the password
    "postgresql+psycopg://u@db.example/enstune?password=s3cr3t",
    "postgresql+psycopg:///enstune?host=db.example&user=u&password=s3cr3t",
    "postgresql:u:s3cr3t@db.example/enstune",  # malformed: no "//"
])
def test_masking_hides_every_form_of_password(url):
    from enstune.storage import mask_url, mask_url_text

    assert "s3" not in mask_url(url) and "cr3t" not in mask_url(url) and "***" in mask_url(url)
    secret = "s3@cr3t" if "s3@cr3t" in url else "s3cr3t"
    message = mask_url_text(f"cannot open {url}: the server refused {secret}", url)
    assert "cr3t" not in message and "db.example" in message


@pytest.mark.slow
def test_a_worker_started_while_the_database_is_down_waits_for_it(pg, home):
    url = pg.url()
    assert CliRunner().invoke(app, ["study", "create", "starsse-demo", "--name", "late", "--storage", url,
                                    "--set", "n_trials=1", "--set", "members=2", "--set", "finetune.epochs=2",
                                    "--set", "space.lr_mult.choices=[2]", "--set", "space.epoch_mult.choices=[1]",
                                    "--set", 'evaluate=["calibration"]']).exit_code == 0
    pg.down()
    try:
        worker = cli("study", "run", "late", "--storage", url)
        # The database comes back only once the worker has said it waits (on a loaded machine the worker may
        # take many seconds to start at all).
        said = next((line for line in iter(worker.stderr.readline, "") if "waiting up to 10 min for it" in line), None)
        assert said is not None and worker.poll() is None, worker.communicate()
    finally:
        pg.up()
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    assert not any("waiting up to 10 min for it" in line for line in err.splitlines()), "said once"
    study = optuna.load_study(study_name="late", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
