"""Workers through `enstune storage proxy`: real proxies in front of PostgreSQL and the journal, real workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from enstune import study as st
from enstune.cli import app
from test_storage import CHEAP, cli, plain_and_enstune, sets, transactions, trials, wait_all

SECRET = "pr0xy-Hunter2"
# Two trials of two short members; a worker whose trial is done checks every heartbeat for the other's.
QUICK = ["n_trials=2", "members=2", "finetune.epochs=3", 'evaluate=["calibration"]', "heartbeat=2"]
# Members of a second or more each on the demo MLP, so a worker can be caught inside one.
SLOW = ["n_trials=2", "members=3", "finetune.epochs=100", "space.lr_mult.choices=[0.5, 2]",
        "space.epoch_mult.choices=[1]", "pruner='none'", 'evaluate=["calibration"]']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def env(home) -> dict[str, str]:
    """The environment of this test's processes: its own runs directory, with the checkpoint in it."""
    return {"ENSTUNE_HOME": str(home)}


@contextlib.contextmanager
def proxy(*args: str, env: dict[str, str], port: int | None = None) -> Iterator[tuple[str, list[str], Any]]:
    """A running `enstune storage proxy ARGS`: its grpc:// URL, its output (whole once it stopped), its process."""
    port = port or free_port()
    proc = cli("storage", "proxy", "--port", str(port), *args, env=env)
    output = []
    while not output or not output[-1].startswith("gRPC storage proxy on "):
        line = proc.stderr.readline()
        assert line, f"the proxy ended: {proc.wait()} {''.join(output)}"
        output.append(line)
    try:
        yield f"grpc://127.0.0.1:{port}", output, proc
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        output += [out, err]


@contextlib.contextmanager
def in_process_proxy(storage: Any, plain: bool = False) -> Iterator[str]:
    """A storage proxy serving ``storage`` from this process (Optuna's own with ``plain``): its grpc:// URL."""
    from optuna.storages._grpc.server import make_server

    from enstune.storage.proxy import server

    port = free_port()
    running = make_server(storage, "127.0.0.1", port) if plain else server(storage, "127.0.0.1", port)
    running.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        running.stop(0)


def journal_trials(home: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def heartbeat_rows(url: str, trial_ids: list[int]) -> set[int]:
    """Trials with a row in Optuna's own heartbeat table (what workers on the database read)."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as c:
        rows = c.execute("SELECT trial_id FROM trial_heartbeats WHERE trial_id = ANY(%s)", (trial_ids,)).fetchall()
    return {r[0] for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("backing", ["postgresql", "journal"])
def test_two_workers_through_the_proxy_complete_the_study_in_the_storage_behind_it(backing, pg, home, env):
    name = f"through-{backing}"
    with proxy(*(["--storage", pg.url()] if backing == "postgresql" else []), env=env) as (url, _, _):
        created = wait_all([cli("study", "create", "starsse-demo", "--name", name, "--storage", url, *sets(QUICK),
                                env=env)])
        assert created[0][0] == 0 and f"study {name} created in {url}" in created[0][1], created
        results = wait_all([cli("study", "run", name, "--storage", url, env=env) for _ in range(2)])
        assert all(rc == 0 for rc, _, _ in results), [err[-800:] for rc, _, err in results if rc]
    # read back from the storage itself, not through the proxy
    done = trials(pg.url(), name) if backing == "postgresql" else journal_trials(home, name)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    assert all(len(t.user_attrs["val_ens_acc"]) == 2 for t in done)
    assert all(t.system_attrs["heartbeat"]["trial"] == t._trial_id for t in done), "every trial beat through it"
    if backing == "postgresql":
        assert heartbeat_rows(pg.url(), [t._trial_id for t in done]) == {t._trial_id for t in done}


@pytest.mark.slow
def test_a_worker_killed_behind_the_proxy_has_its_trial_failed_and_requeued(pg, env):
    name = "killed-behind-proxy"
    with proxy("--storage", pg.url(), env=env) as (url, _, _):
        st.create("starsse-demo", name=name, storage_url=url, overrides=SLOW + ["heartbeat=1"])  # through the proxy
        workers = [cli("study", "run", name, "--storage", url, env=env) for _ in range(2)]
        by_pid = {p.pid: p for p in workers}
        victim, pid = None, None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:
            for t in trials(pg.url(), name):
                # two members reported: the worker is now inside member 3
                if t.state == TrialState.RUNNING and len(t.intermediate_values) == 2 and "worker" in t.user_attrs:
                    pid = int(t.user_attrs["worker"].rsplit(":", 1)[1])
                    by_pid[pid].send_signal(signal.SIGKILL)
                    victim = t.number
                    break
            time.sleep(0.05)
        assert victim is not None, "no worker was caught inside a member"
        results = wait_all([p for p in workers if p.pid != pid])
        by_pid[pid].wait()
        assert all(rc == 0 for rc, _, _ in results), [err[-800:] for rc, _, err in results if rc]
    everything = trials(pg.url(), name)
    assert everything[victim].state == TrialState.FAIL
    assert everything[victim].system_attrs["heartbeat"]["pid"] == pid
    assert sorted(t.state.name for t in everything) == ["COMPLETE", "COMPLETE", "FAIL"]
    (retry,) = [t for t in everything if t.system_attrs.get("failed_trial") == victim]
    assert retry.state == TrialState.COMPLETE and retry.params == everything[victim].params
    assert retry.user_attrs["resumed_from_member"] == 3 and retry.user_attrs["cached_members"] == 2


@pytest.mark.slow
def test_a_worker_rides_out_a_restart_of_the_proxy(pg, env):
    name, port = "proxy-restart", free_port()
    with proxy("--storage", pg.url(), env=env, port=port) as (url, _, first):
        st.create("starsse-demo", name=name, storage_url=url, overrides=SLOW + ["members=2"])
        worker = cli("study", "run", name, "--storage", url, env=env)
        deadline = time.monotonic() + 240
        while not any(t.intermediate_values for t in trials(pg.url(), name)):
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        first.kill()  # inside a trial: the proxy goes away under the worker
        first.wait()
    with proxy("--storage", pg.url(), env=env, port=port):  # the same port at once, its connections in TIME_WAIT
        (rc, _, err), = wait_all([worker])
    assert rc == 0 and "Traceback" not in err, err[-800:]
    assert [t.state for t in trials(pg.url(), name)] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize("backing", ["postgresql", "journal"])
def test_heartbeats_through_the_proxy_tell_stale_dead_and_inherited_beats(backing, pg, home, env):
    from enstune.storage import open_storage
    from enstune.storage.heartbeat import HEARTBEAT_ATTR

    with proxy(*(["--storage", pg.url()] if backing == "postgresql" else []), env=env) as (url, _, _):
        storage = open_storage(url, heartbeat=10)
        study = optuna.create_study(study_name=f"beats-{backing}", storage=storage)
        started = [study.ask() for _ in range(5)]
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        now, here = time.time(), socket.gethostname()
        ids = [t._trial_id for t in started]
        beats = [{"time": now - 100, "host": "elsewhere", "pid": 1},  # silent for 10 intervals: stale
                 {"time": now - 5, "host": "elsewhere", "pid": 1},  # beat half an interval ago: alive
                 {"time": now - 5, "host": here, "pid": dead.pid, "start": None},  # its process is gone: stale
                 {"time": now - 5, "host": here, "pid": os.getpid(), "start": None}]  # this process: alive
        for trial_id, beat in zip(ids, beats):
            storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, {**beat, "trial": trial_id})
        # started[4] has no heartbeat yet and started just now: alive
        assert sorted(storage._get_stale_trial_ids(study._study_id)) == [ids[0], ids[2]]
        storage.record_heartbeat(ids[0])
        assert storage._get_stale_trial_ids(study._study_id) == [ids[2]], "a new heartbeat revives it"

        optuna.storages.fail_stale_trials(study)  # fails the dead worker's trial and queues it again
        assert study.trials[2].state == TrialState.FAIL
        (queued,) = study.get_trials(states=(TrialState.WAITING,))
        assert queued.system_attrs["failed_trial"] == 2 and queued.params == started[2].params
        retry = study.ask()  # taken by a live worker, which has not beaten yet
        assert retry.number == queued.number
        assert storage.get_trial(retry._trial_id).system_attrs[HEARTBEAT_ATTR]["pid"] == dead.pid
        assert retry._trial_id not in storage._get_stale_trial_ids(study._study_id), \
            "the beat it copied from the trial it retries is not its own"

        quick = open_storage(url, heartbeat=1)  # never beats: judged from when it was first seen running
        silent = optuna.create_study(study_name=f"silent-{backing}", storage=quick).ask()
        assert quick._get_stale_trial_ids(silent.study._study_id) == []
        time.sleep(3)
        assert quick._get_stale_trial_ids(silent.study._study_id) == [silent._trial_id]


def test_workers_on_the_database_and_behind_the_proxy_read_each_others_heartbeats(pg, env):
    from enstune.storage import open_storage
    from enstune.storage.heartbeat import HEARTBEAT_ATTR

    with proxy("--storage", pg.url(), env=env) as (url, _, _):
        direct, proxied = open_storage(pg.url(), heartbeat=10), open_storage(url, heartbeat=10)
        study = optuna.create_study(study_name="mixed-beats", storage=direct)
        on_db, behind = study.ask(), study.ask()
        direct.record_heartbeat(on_db._trial_id)
        proxied.record_heartbeat(behind._trial_id)
        assert heartbeat_rows(pg.url(), [on_db._trial_id, behind._trial_id]) == {on_db._trial_id, behind._trial_id}
        seen = proxied.get_trial(on_db._trial_id).system_attrs[HEARTBEAT_ATTR]
        assert seen["trial"] == on_db._trial_id and seen["pid"] == os.getpid()
        assert proxied._get_stale_trial_ids(study._study_id) == []


@pytest.mark.parametrize("served", ["enstune", "optuna"])
def test_through_the_proxy_a_census_and_a_trials_attributes_are_one_transaction_each(served, pg, home):
    import collections

    from enstune import study as st
    from enstune.storage import bulk, open_storage, served_storage

    behind = served_storage(pg.url())
    with in_process_proxy(behind, plain=served == "optuna") as url:  # a plain Optuna proxy: Optuna's requests
        study = optuna.create_study(study_name=f"census-{served}", storage=open_storage(url), direction="maximize")
        done, failed, pruned, running = (study.ask() for _ in range(4))
        study.tell(done, 0.5)
        study.tell(failed, state=TrialState.FAIL)
        pruned.report(0.9, step=1)
        study.tell(pruned, state=TrialState.PRUNED)
        study.enqueue_trial({})
        with transactions(behind) as begun:
            counted = st.census(study)
            st.set_user_attrs(running, {"a": 1, "b": [0.5, 0.75], "c": None})
        if served == "enstune":
            assert begun[0] == 2
        assert counted == st.Census(collections.Counter(t.state for t in study.trials), 0.5)
        assert st.census(study, below=2).states == {TrialState.COMPLETE: 1, TrialState.FAIL: 1}
        study.tell(running, 1.0)
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            st.set_user_attrs(running, {"late": 1})
        with pytest.raises(KeyError):
            bulk.set_trial_attrs(study._storage, 10**9, user={"nobody": 1})
    assert trials(pg.url(), f"census-{served}")[3].user_attrs == {"a": 1, "b": [0.5, 0.75], "c": None}


def test_a_workers_trial_through_the_proxy_costs_at_most_three_transactions_more_than_plain_optunas(pg, home):
    from enstune import study as st
    from enstune.storage import open_storage, proxy_address, served_storage

    behind = served_storage(pg.url())
    with in_process_proxy(behind) as url:
        st.create("starsse-demo", name="cost-proxy", storage_url=url, overrides=CHEAP + ["n_trials=6"])
        host, port = proxy_address(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            plain_client = optuna.storages.GrpcStorageProxy(host=host, port=port)
        plain, enstune = plain_and_enstune(plain_client, open_storage(url, heartbeat=60), "cost-proxy", 6,
                                           counted=behind)
    assert enstune - plain <= 3, (plain, enstune)


def one_line_error(rc: int, stderr: str, *needles: str) -> None:
    assert rc == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr


@pytest.mark.slow
def test_an_unreachable_proxy_is_a_one_line_error(home):
    url = f"grpc://127.0.0.1:{free_port()}"
    results = wait_all([cli("study", "run", "x", "--storage", url, "--wait-storage", "0"), cli("study", "create", "starsse-demo",
                                                                           "--storage", url)], timeout=120)
    for rc, _, err in results:
        one_line_error(rc, err, f"cannot reach the storage proxy at {url}")


def test_bad_proxy_addresses_are_one_line_errors(home):
    def invoke(*args: str):
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.stderr

    one_line_error(*invoke("storage", "proxy", "--port", "70000"), "--port must be in 1..65535, got 70000")
    one_line_error(*invoke("storage", "proxy", "--port", "0"), "--port must be in 1..65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(*invoke("storage", "proxy", "--port", str(port)), f"cannot listen on 127.0.0.1:{port}")
    one_line_error(*invoke("storage", "proxy", "--storage", "grpc://127.0.0.1:13000"), "is itself a storage proxy")
    # an empty or 0 port is not the default port; TLS is not spoken; a broken IPv6 address is no host
    for url in ("grpc://127.0.0.1:notaport", "grpc://127.0.0.1:99999", "grpc://", "grpc://h:1/db",
                "grpc://127.0.0.1:0", "grpc://127.0.0.1:", "grpc+tls://127.0.0.1:13000", "grpc://[zz]:13000",
                "grpc://[::1:13000", "grpc://[::1]]:13000"):
        one_line_error(*invoke("study", "list", "--storage", url), "a storage proxy is grpc://HOST:PORT")
    # a gRPC server that is not a storage proxy (a bare one, serving nothing)
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        one_line_error(*invoke("study", "list", "--storage", f"grpc://127.0.0.1:{port}"),
                       f"the server at grpc://127.0.0.1:{port} is not an Optuna storage proxy (UNIMPLEMENTED")
    finally:
        server.stop(None)
    one_line_error(*invoke("study", "list", "--storage", f"grpc://u:{SECRET}@127.0.0.1:1"), "grpc://u:***@")
    assert SECRET not in invoke("study", "list", "--storage", f"grpc://u:{SECRET}@127.0.0.1:1")[1]


@pytest.fixture()
def bob_url(pg) -> str:
    """The cluster's URL for a role that logs in with password ``SECRET``."""
    port = pg.url().split(":")[-1].split("/")[0]
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'bob'").fetchone() is None:
            c.execute(f"CREATE ROLE bob LOGIN SUPERUSER PASSWORD '{SECRET}'")
        hba = Path(c.execute("SHOW hba_file").fetchone()[0])
        if "bob" not in hba.read_text():
            hba.write_text("host all bob 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        c.execute("SELECT pg_reload_conf()")
    return f"postgresql+psycopg://bob:{SECRET}@127.0.0.1:{port}/enstune"


def test_the_proxy_never_shows_the_password_of_the_database_behind_it(bob_url, env):
    with proxy("--storage", bob_url, "--host", "0.0.0.0", env=env) as (url, output, _):
        assert output[0].startswith("warning: the storage proxy has no authentication"), output
        assert output[-1].strip() == f"gRPC storage proxy on grpc://0.0.0.0:{url.rsplit(':', 1)[1]} for " \
                                     f"{bob_url.replace(SECRET, '***')}"
        created = wait_all([cli("study", "create", "starsse-demo", "--name", "bob", "--storage", url, env=env)])
        assert created[0][0] == 0, created
    assert len(output) == 4 and SECRET not in "".join(output), output
    assert [t.state for t in trials(bob_url, "bob")] == [TrialState.WAITING] * 16

    wrong = bob_url.replace(SECRET, SECRET + "-wrong")
    refused = wait_all([cli("storage", "proxy", "--storage", wrong, "--port", str(free_port()), env=env)])
    (rc, out, err), = refused
    one_line_error(rc, err, "cannot open storage postgresql+psycopg://bob:***@")
    assert SECRET not in out + err


def test_a_call_that_waits_for_the_proxy_says_so_once(env, monkeypatch, caplog):
    from enstune.storage import open_storage
    from enstune.storage import proxy as client

    monkeypatch.setattr(client, "NOTICE", 1.0)  # the notice's delay (10 s), shortened
    with proxy(env=env) as (url, _, proc):
        storage = open_storage(url)
        proc.send_signal(signal.SIGSTOP)  # a proxy that answers nothing, as one on a host that hangs
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                listed = pool.submit(storage.get_all_studies)
                time.sleep(4)
                told = [r.getMessage() for r in caplog.records if r.name == "enstune.storage"]
                proc.send_signal(signal.SIGCONT)
                assert listed.result(timeout=60) == [], "the call goes through once the proxy answers"
        finally:
            proc.send_signal(signal.SIGCONT)
    assert told == [f"the storage proxy at {url} is not answering; waiting up to 10 min for it to come back"]
