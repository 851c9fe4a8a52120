"""Member claims: of the workers that need a member at once, one trains it; the others wait and take it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from enstune import study as st
from enstune.cache import MemberCache, content_key
from enstune.claims import Claims, Held, Lease, companion_name
from enstune.errors import EnstuneError
from enstune.storage import open_storage
from test_storage import cli

HEARTBEAT = 1  # seconds: a dead holder's claim is stale after two
# A worker process that claims member KEY of study NAME, says so, and holds the claim until it is killed.
HOLDER = """
import sys, time
from enstune.claims import Claims
from enstune.storage import open_storage
url, name, key = sys.argv[1] or None, sys.argv[2], sys.argv[3]
lease = Claims(open_storage(url, heartbeat=int(sys.argv[4])), name).acquire(key, lambda k: None, wait=False)
with lease:
    print("held", flush=True)
    time.sleep(600)
"""
# Member 1 of a few seconds on the demo MLP (longer than two workers started together take to start
# apart), members 2 short; two grid points, one per worker.
E2E = ["members=2", "finetune.epochs=100", "space.lr_mult.choices=[2, 4]", "space.epoch_mult.choices=[0.25]",
       "n_trials=2", "pruner='none'", 'evaluate=["calibration"]', f"heartbeat={HEARTBEAT}"]


def url_of(kind: str, pg) -> str | None:  # noqa: ANN001 - the pg fixture's cluster
    """The storage URL of ``kind``: None (the embedded journal in the test's home) or the test PostgreSQL."""
    return pg.url() if kind == "postgresql" else None


def claim_trials(url: str | None, name: str) -> list[optuna.trial.FrozenTrial]:
    """The claims on study ``name``'s members, read through a storage of their own."""
    storage = open_storage(url)
    return storage.get_all_trials(storage.get_study_id_from_name(companion_name(name)))


def entry() -> dict:
    """A member cache entry."""
    g = torch.Generator().manual_seed(0)
    return {"state": {"w": torch.randn(64, generator=g)}, "val": torch.rand(8, 4, generator=g),
            "test": torch.rand(8, 4, generator=g), "epochs": 3}


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, failing the test where it has not returned after ``seconds`` (a wait that never ends)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert out, f"still waiting after {seconds} s"
    return out[0]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_one_of_four_claims_holds_and_the_others_wait_for_its_member(kind, request, tmp_path):
    url = url_of(kind, request.getfixturevalue("pg") if kind == "postgresql" else None)
    name = f"claims-{uuid.uuid4().hex[:8]}"
    claims = [Claims(open_storage(url, heartbeat=HEARTBEAT), name) for _ in range(4)]  # four workers' storages
    cache = MemberCache(FileSystemArtifactStore(tmp_path))
    key = content_key(test=name)
    start = threading.Barrier(len(claims))
    outcomes: list[Lease | Held | None] = [None] * len(claims)

    def claim(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = claims[i].acquire(key, cache.get, wait=False)
        except Held as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claims))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    held = [i for i, o in enumerate(outcomes) if isinstance(o, Lease)]
    assert len(held) == 1 and sum(isinstance(o, Held) for o in outcomes) == 3, outcomes
    lease = outcomes[held[0]]
    assert isinstance(lease, Lease) and lease.found is None

    found: list = []
    waiters = [threading.Thread(target=lambda c=c: found.append(c.acquire(key, cache.get)))
               for i, c in enumerate(claims) if i != held[0]]
    with lease:
        for t in waiters:
            t.start()
        waiters[0].join(timeout=2 * HEARTBEAT + 1)  # past a lease's expiry: the holder's heartbeats keep it
        assert all(t.is_alive() for t in waiters) and not found, "a waiter went on while the member was held"
        cache.put(key, member := entry())
    for t in waiters:
        t.join(timeout=60)
    assert len(found) == 3 and all(torch.equal(f.found["state"]["w"], member["state"]["w"]) for f in found)
    states = [t.state for t in claim_trials(url, name)]
    assert states.count(TrialState.COMPLETE) == 1 and set(states) == {TrialState.COMPLETE, TrialState.FAIL}


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_killed_holders_claim_expires_and_a_waiter_trains_the_member(kind, request, home):
    from enstune.config import load_template
    from enstune.members import Workspace
    from enstune.methods import get_method

    url = url_of(kind, request.getfixturevalue("pg") if kind == "postgresql" else None)
    name = f"killed-{uuid.uuid4().hex[:8]}"
    spec = load_template("starsse-demo", ["members=2", "finetune.epochs=3"])
    job = get_method("starsse").plan(st.trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 1}), spec))[0]
    ws = Workspace(spec.task, home, claims=Claims(open_storage(url, heartbeat=HEARTBEAT), name, poll=0.1))
    key = ws.job_key(job, None)

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url or "", name, key, str(HEARTBEAT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(Held, match=f"being trained by .*:{holder.pid}"):
            ws.run(job, None, torch.device("cpu"), wait=False)
    finally:
        holder.send_signal(signal.SIGKILL)  # no handler runs: the claim stays RUNNING, its heartbeats stop
        holder.wait()
    (dead,) = [t for t in claim_trials(url, name) if t.state == TrialState.RUNNING]

    result = within(120, lambda: ws.run(job, None, torch.device("cpu")))  # waits for the lease to expire, then trains
    assert not result.cached and result.epochs == 3
    assert ws.cache.get(key) is not None
    claims = {t.number: t for t in claim_trials(url, name)}
    assert claims[dead.number].state == TrialState.FAIL, "the dead holder's claim is failed, not left running"
    mine = [t for t in claims.values() if t.state == TrialState.COMPLETE]
    assert len(mine) == 1 and mine[0].system_attrs["owner"].endswith(f":{os.getpid()}")
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in claims.values()), "none re-queued"


def test_a_member_whose_training_raises_is_taken_over_at_once(home, tmp_path):
    name = "raises"
    first, second = (Claims(open_storage(heartbeat=600), name, poll=0.05) for _ in range(2))
    cache = MemberCache(FileSystemArtifactStore(tmp_path))
    key = content_key(test=name)
    lease = first.acquire(key, cache.get)
    with pytest.raises(Held):
        second.acquire(key, cache.get, wait=False)
    with pytest.raises(RuntimeError), lease:
        raise RuntimeError("diverged")
    # Long before a 600-second heartbeat could expire: the failed claim frees the member.
    taken = second.acquire(key, cache.get, wait=False)
    assert taken.found is None and taken.trial_id is not None


def test_the_claims_study_is_no_study_of_its_own(home):
    st.create("starsse-demo", name="owner", overrides=["n_trials=2"])
    Claims(open_storage(heartbeat=60), "owner").acquire(content_key(test="owner"), lambda k: None)
    companion = companion_name("owner")
    assert companion in optuna.get_all_study_names(open_storage())
    assert [s["name"] for s in st.list_studies()] == ["owner"]
    with pytest.raises(EnstuneError, match="member claims of study 'owner'"):
        st.show(companion)
    with pytest.raises(EnstuneError, match="member claims of study 'owner'"):
        st.delete(companion)
    st.delete("owner")
    assert optuna.get_all_study_names(open_storage()) == []


@pytest.mark.slow
def test_concurrent_workers_train_member_1_once_and_give_a_single_workers_results(home):
    from enstune.worker import run

    for name in ("alone", "together"):
        assert st.create("starsse-demo", name=name, overrides=E2E)[1]
    # One worker with a cache of its own: the reference (it also pre-trains the demo checkpoints).
    run("alone", artifacts=str(home / "alone-artifacts"))
    workers = [cli("study", "run", "together") for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]

    storage = open_storage()
    reference = {tuple(sorted(t.params.items())): t
                 for t in optuna.load_study(study_name="alone", storage=storage).trials}
    trials = optuna.load_study(study_name="together", storage=storage).trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    trained_1 = [t.number for t in trials if 1 in t.user_attrs["trained_members"]]
    assert len(trained_1) == 1, f"member 1 was trained by trials {trained_1}"
    assert all(t.user_attrs["trained_members"] == [2] for t in trials if t.number not in trained_1)
    (member_1,) = {t.user_attrs["member_keys"][0] for t in trials}
    waited = [c for c in claim_trials(None, "together")
              if c.system_attrs["member"] == member_1 and c.state == TrialState.FAIL]
    assert waited, "no worker asked for member 1 while it was being trained: the workers did not overlap"
    for t in trials:
        single = reference[tuple(sorted(t.params.items()))]
        assert t.user_attrs["member_keys"] == single.user_attrs["member_keys"]
        assert t.value == single.value and t.user_attrs["val_ens_acc"] == single.user_attrs["val_ens_acc"]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_killed_holder_on_this_host_is_taken_over_within_one_heartbeat_interval(kind, request, tmp_path):
    # A claim silent for two of these would take ten minutes to expire: half of one is ample room, even
    # on a loaded machine, for a takeover by the holder's liveness.
    long_beat = 300
    url = url_of(kind, request.getfixturevalue("pg") if kind == "postgresql" else None)
    name = f"dead-{uuid.uuid4().hex[:8]}"
    cache = MemberCache(FileSystemArtifactStore(tmp_path))
    key = content_key(test=name)
    waiter = Claims(open_storage(url, heartbeat=long_beat), name, poll=0.1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url or "", name, key, str(long_beat)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(Held):  # the waiter has read the claims while the holder lived
            waiter.acquire(key, cache.get, wait=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    start = time.monotonic()
    lease = within(long_beat, lambda: waiter.acquire(key, cache.get))
    assert lease.found is None and lease.trial_id is not None
    assert time.monotonic() - start < long_beat / 2, "taken over by the holder's liveness, not by its silence"
    dead = [t for t in claim_trials(url, name) if t.system_attrs["owner"].endswith(f":{holder.pid}")]
    assert [t.state for t in dead] == [TrialState.FAIL]


def test_a_trial_whose_worker_on_this_host_died_is_stale_at_once_on_the_database(pg):
    from enstune.storage.heartbeat import HEARTBEAT_ATTR

    storage = open_storage(pg.url(), heartbeat=60)
    warnings.simplefilter("ignore", UserWarning)  # Optuna's: heartbeats outside Study.optimize
    study = optuna.create_study(study_name=f"gone-{uuid.uuid4().hex[:8]}", storage=storage)
    trial = study.ask()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert storage._get_stale_trial_ids(study._study_id) == []
    storage.record_heartbeat(trial._trial_id)
    beat = storage.get_trial(trial._trial_id).system_attrs[HEARTBEAT_ATTR]
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, {**beat, "pid": dead.pid, "start": None})
    assert storage.is_stale(study._study_id, storage.get_trial(trial._trial_id))
    other = open_storage(pg.url(), heartbeat=60)  # another worker's check before its next trial
    assert other._get_stale_trial_ids(study._study_id) == [trial._trial_id]
