"""Heartbeats through a database restart and a trial failed elsewhere: no live worker loses its trial, none writes
over a retry, and a point that kills its worker every time stops being queued."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from enstune import study as st
from enstune.storage import open_storage
from enstune.storage import retry
from enstune.storage.heartbeat import Beats, TakenOver

ENSTUNE = str(Path(sys.executable).parent / "enstune")
W = TrialState


def _running_trial(storage, name: str) -> tuple[optuna.Study, int]:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    return study, trial._trial_id


def _until(condition, timeout: float, step: float = 0.2) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - start


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_trial_that_just_started_is_never_stale(kind, pg, home):
    url = None if kind == "journal" else pg.url()
    mine, judge = open_storage(url, heartbeat=1), open_storage(url, heartbeat=1)
    study, trial_id = _running_trial(mine, f"fresh-{kind}")
    assert judge._get_stale_trial_ids(study._study_id) == []
    with Beats(trial_id, mine):
        time.sleep(3.5)  # past the grace period, beating
        assert judge._get_stale_trial_ids(study._study_id) == []


def test_a_trial_failed_elsewhere_stops_its_beats_and_nothing_more_of_it_is_written(home):
    mine, judge = open_storage(None, heartbeat=1), open_storage(None, heartbeat=1)
    study, trial_id = _running_trial(mine, "taken")
    beats = Beats(trial_id, mine)
    with beats:
        beats.check()  # still its own
        judge.set_trial_state_values(trial_id, W.FAIL)
        took = _until(beats.ended.is_set, 10)
        assert took <= 1 + 1.0, "found within one interval (and a little)"
        with pytest.raises(TakenOver):
            beats.check()
    before = judge.get_trial(trial_id)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        mine.set_trial_user_attr(trial_id, "val_ens_acc", [0.9])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        mine.set_trial_state_values(trial_id, W.COMPLETE, [0.9])
    after = open_storage(None).get_trial(trial_id)
    assert after.state == W.FAIL and after.user_attrs == before.user_attrs


def _beat_age(storage, study_id: int, trial_id: int) -> float:
    return storage.heartbeat_ages(study_id).get(trial_id, float("inf"))


@pytest.mark.slow
def test_heartbeats_resume_within_seconds_of_a_database_restart_and_silence_while_down_is_no_fault(pg, home):
    url = pg.url()
    mine, judge = open_storage(url, heartbeat=2), open_storage(url, heartbeat=2)
    study, trial_id = _running_trial(mine, "restart-beats")
    quiet = open_storage(url, heartbeat=2)
    _, silent = _running_trial(quiet, "restart-silent")
    quiet.record_heartbeat(silent)  # beats once, then never again
    beats = Beats(trial_id, mine)
    with beats:
        _until(lambda: _beat_age(judge, study._study_id, trial_id) < 2, 30)
        pg.down()
        time.sleep(16)
        assert pg.up() == url
        back = time.monotonic()
        # Its first beat lands within the retry cap of the database's return (plus a loaded machine's slack),
        # and no judge calls it stale meanwhile: its silence fell while nobody could beat.
        while _beat_age(judge, study._study_id, trial_id) > time.monotonic() - back:
            assert trial_id not in judge._get_stale_trial_ids(study._study_id)
            assert time.monotonic() - back < 2 + 15, "heartbeats did not resume"
            time.sleep(0.2)
        assert beats._thread is not None and beats._thread.is_alive() and not beats.ended.is_set()
        # The trial that stopped beating before the restart is stale a grace period after it, not at once.
        silent_study = optuna.load_study(study_name="restart-silent", storage=url)._study_id
        early = silent in judge._get_stale_trial_ids(silent_study)
        assert not early or time.monotonic() - back >= 4, "a trial is silent only from the server's start"
        _until(lambda: silent in judge._get_stale_trial_ids(silent_study), 30)
        assert trial_id not in judge._get_stale_trial_ids(study._study_id)


def _interrupted(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial | None:
    """Trial ``trial_id`` failed without an error of its own (its worker killed), and its point queued again."""
    storage = study._storage
    storage.set_trial_state_values(trial_id, W.FAIL)
    return retry.requeue(study, storage.get_trial(trial_id))


def test_a_point_that_kills_its_worker_every_time_fails_for_good_after_the_cap(home):
    storage = open_storage(None, heartbeat=1)
    study = optuna.create_study(study_name="oom", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 0.5}, skip_if_exists=False)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    # One error along the way counts against the retries, not against the interruptions.
    storage.set_trial_system_attr(trial._trial_id, retry.ERROR_ATTR, "RuntimeError: once")
    again = retry.requeue(study, (storage.set_trial_state_values(trial._trial_id, W.FAIL),
                                  storage.get_trial(trial._trial_id))[1])
    assert again is not None and retry.interruptions(again) == 0
    for n in range(1, retry.MAX_INTERRUPTIONS + 1):
        running = study.ask()  # the queued retry
        assert running._trial_id == again._trial_id
        again = _interrupted(study, running._trial_id)
        if n < retry.MAX_INTERRUPTIONS:
            assert again is not None and retry.interruptions(again) == n
    assert again is None
    (lost,) = retry.failed_for_good(study.get_trials(deepcopy=False))
    assert retry.why(lost) == (f"interrupted {retry.MAX_INTERRUPTIONS} times (its worker stopped or died each time, "
                               f"as the out-of-memory killer ends one); its last error: RuntimeError: once")
    assert study.get_trials(states=(W.WAITING,)) == []
    # A person's requeue starts both counts afresh.
    fresh = retry.requeue(study, lost, fresh=True)
    assert fresh is not None and retry.interruptions(fresh) == 0 and retry.errors(fresh) == []


# A single grid point of slow members (300 epochs: 3.7 s each on one thread), so a worker is caught inside one.
SLOW = ["members=4", "finetune.epochs=300", "space.lr_mult.choices=[2]", "space.epoch_mult.choices=[1]",
        "n_trials=1", "pruner='none'", 'evaluate=["calibration"]']


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([ENSTUNE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


@pytest.mark.slow
def test_a_worker_whose_trial_was_failed_elsewhere_leaves_it_within_an_interval_and_writes_nothing_over_it(pg, home):
    url = pg.url()
    env = {"ENSTUNE_STORAGE": url, "ENSTUNE_HOME": str(home)}
    st.create("starsse-demo", name="judged", storage_url=url, overrides=SLOW + ["heartbeat=2"])
    worker = _cli("study", "run", "judged", env=env)
    judge = open_storage(url, heartbeat=2)
    study = optuna.load_study(study_name="judged", storage=judge)
    deadline = time.monotonic() + 300  # a loaded machine may take a minute to start a worker
    while True:
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        running = study.get_trials(states=(W.RUNNING,))
        if running and len(running[0].intermediate_values) >= 2:
            break
        time.sleep(0.2)
    (victim,) = running
    # As a judge that found it silent would: failed and queued again, while its worker lives. Queued first: a
    # judge fails, then queues, and a worker that left in between found nothing queued and rightly stopped (the
    # judge, a worker itself, runs the retry); this worker is to run it here.
    victim.state = W.FAIL
    retry.Requeue()(study, victim)
    judge.set_trial_state_values(victim._trial_id, W.FAIL)
    failed_at = time.time()
    frozen = judge.get_trial(victim._trial_id)
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    left = [line for line in err.splitlines() if "was failed by another worker" in line]
    assert len(left) == 1 and f"trial {victim.number} of this worker" in left[0], err
    # Its line is stamped: it left the trial within an interval of its failure (plus a step and a loaded machine).
    stamp = re.match(r"(\S+) ", left[0]).group(1)
    from datetime import datetime

    assert datetime.fromisoformat(stamp).timestamp() - failed_at < 2 + 10, left[0]
    after = judge.get_trial(victim._trial_id)
    assert after.state == W.FAIL and after.user_attrs == frozen.user_attrs
    assert after.intermediate_values == frozen.intermediate_values and after.system_attrs == frozen.system_attrs
    trials = study.get_trials()
    done = [t for t in trials if t.state == W.COMPLETE]
    assert len(done) == 1 and done[0].system_attrs["failed_trial"] == victim.number, [t.state for t in trials]
    assert not [t for t in trials if t.state in (W.RUNNING, W.WAITING)]
    assert retry.errors(done[0]) == [] and done[0].user_attrs["cached_members"] >= 2


@pytest.mark.slow
def test_workers_keep_their_trials_through_a_long_database_restart(pg, home):
    url = pg.url()
    env = {"ENSTUNE_STORAGE": url, "ENSTUNE_HOME": str(home)}
    overrides = ["members=4", "finetune.epochs=150", "space.lr_mult.choices=[0.5, 2]",
                 "space.epoch_mult.choices=[1]", "n_trials=2", "pruner='none'", 'evaluate=["calibration"]',
                 "heartbeat=2"]
    st.create("starsse-demo", name="long-restart", storage_url=url, overrides=overrides)
    workers = [_cli("study", "run", "long-restart", env=env) for _ in range(2)]
    deadline = time.monotonic() + 300
    while len([t for t in optuna.load_study(study_name="long-restart", storage=url).get_trials(states=(W.RUNNING,))
               if t.intermediate_values]) < 2:
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
        time.sleep(0.2)
    pg.down()
    time.sleep(16)  # eight heartbeat intervals: every beat falls silent
    assert pg.up() == url
    results = [(w.wait(timeout=600), w.communicate()[1]) for w in workers]
    assert all(rc == 0 for rc, _ in results), [err[-800:] for _, err in results]
    assert not any("Traceback" in err for _, err in results)
    assert any("recorded again" in err for _, err in results), "the heartbeats saw the database go and come back"
    trials = optuna.load_study(study_name="long-restart", storage=url).get_trials()
    assert [t.state for t in trials] == [W.COMPLETE, W.COMPLETE], "no live worker's trial was failed"


def test_the_worker_beats_with_enstunes_thread_inside_optimize(home):
    from enstune.storage.heartbeat import beating, beats_for
    from enstune.storage.optuna_private import heartbeat_threads

    storage = open_storage(None, heartbeat=1)
    study = optuna.create_study(study_name="own-thread", storage=storage, direction="maximize")
    seen = []
    with heartbeat_threads(beats_for):
        study.optimize(lambda t: seen.append(beating(t._trial_id)) or 1.0, n_trials=1)
    assert isinstance(seen[0], Beats) and beating(study.trials[0]._trial_id) is None
    study.optimize(lambda t: seen.append(beating(t._trial_id)) or 1.0, n_trials=1)
    assert seen[1] is None, "Optuna's own thread again outside"
