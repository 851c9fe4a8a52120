"""Whatever stops a worker, no trial and no grid point is lost: signals, errors, retries."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from cli_helpers import TINY
from enstune import study as st
from enstune.progress import Reporter
from enstune.worker import run

W = optuna.trial.TrialState
# Members slow enough to be caught mid-trial: 4 members of 60 epochs on the demo.
SLOW = ["n_trials=3", "members=4", "finetune.epochs=60", "space.lr_mult.choices=[0.5, 2]",
        "space.epoch_mult.choices=[0.5, 1]", "pruner='none'", 'evaluate=["calibration"]']


def _journal(home: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))


def _worker(name: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("enstune")
    return subprocess.Popen([str(exe), "study", "run", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))


def _wait_for_a_member(home: Path, name: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        trials = optuna.load_study(study_name=name, storage=_journal(home)).get_trials(states=(W.RUNNING,))
        if trials and trials[0].intermediate_values:
            return
        time.sleep(0.5)
    raise AssertionError(f"no member finished in time: {proc.poll()}, {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_requeues_the_trial_in_progress_and_a_new_worker_finishes_the_grid(home, sig, code):
    st.create("starsse-demo", name="sig", overrides=SLOW)
    proc = _worker("sig")
    _wait_for_a_member(home, "sig", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("interrupted: trial 0 re-queued (attempt 2)"), err
    assert "finished member(s) stay in the member cache" in lines[-1]
    study = optuna.load_study(study_name="sig", storage=_journal(home))
    failed = [t for t in study.trials if t.state == W.FAIL]
    assert len(failed) == 1 and failed[0].number == 0
    queued = [t for t in study.trials if t.state == W.WAITING and t.system_attrs.get("failed_trial") == 0]
    assert len(queued) == 1 and queued[0].params == failed[0].params

    finish = _worker("sig")
    out, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err
    study = optuna.load_study(study_name="sig", storage=_journal(home))
    done = [t for t in study.trials if t.state == W.COMPLETE]
    points = [tuple(sorted(t.params.items())) for t in done]
    assert len(points) == 3 and len(set(points)) == 3, "each queued grid point ran exactly once"
    retried = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert retried and retried[0].user_attrs["resumed_from_member"] >= 2, "the finished members were reused"


class Explodes(Reporter):
    """A fault in the middle of a member (the reporter is the worker's own callback)."""

    def epoch_done(self, epoch, epochs, loss):
        if epoch == 2:
            raise RuntimeError("a fault mid-member")


def test_a_failed_trial_goes_back_to_the_queue_up_to_the_retry_limit_then_is_never_silent(home):
    from typer.testing import CliRunner

    from enstune.cli import app
    from enstune.storage import MAX_RETRY
    from enstune.worker import TrialFailed

    st.create("starsse-demo", name="boom", overrides=TINY + ["pruner='none'", "n_trials=1",
                                                              "space.lr_mult.choices=[2]",
                                                              "space.epoch_mult.choices=[1]"])
    for attempt in range(1, MAX_RETRY + 2):
        with pytest.raises(TrialFailed) as failed:
            run("boom", reporter_factory=lambda budget: Explodes())
        study = optuna.load_study(study_name="boom", storage=_journal(home))
        waiting = study.get_trials(states=(W.WAITING,))
        if attempt <= MAX_RETRY:
            assert len(waiting) == 1 and waiting[0].params == {"lr_mult": 2, "epoch_mult": 1}
            assert str(failed.value) == (f"trial {attempt - 1} failed (RuntimeError: a fault mid-member); re-queued "
                                         f"(attempt {attempt + 1}, error {attempt} of at most {MAX_RETRY + 1})")
    assert waiting == [], f"after {MAX_RETRY} retries the point is reported, not queued again"
    assert str(failed.value).startswith(f"trial {MAX_RETRY} failed for good (RuntimeError: a fault mid-member): "
                                        f"its point raised {MAX_RETRY + 1} errors; `enstune study requeue boom`")
    assert len(study.get_trials(states=(W.FAIL,))) == MAX_RETRY + 1
    # Nothing was sampled in place of the lost point (a grid study draws only from its queue), and the next
    # worker says so: which point, why, how to queue it again, and a non-zero exit code.
    runner = CliRunner()
    after = runner.invoke(app, ["study", "run", "boom"])
    assert after.exit_code == 3, after.output
    lost = f"trial {MAX_RETRY} (lr_mult=2, epoch_mult=1) failed for good: {MAX_RETRY + 1} errors, the last: " \
           f"RuntimeError: a fault mid-member"
    assert f"error: {lost}" in after.stderr and "enstune study requeue boom" in after.stderr, after.stderr
    shown = runner.invoke(app, ["study", "show", "boom"])
    assert shown.exit_code == 0 and lost in shown.stdout, shown.output
    requeued = runner.invoke(app, ["study", "requeue", "boom"])
    assert requeued.exit_code == 0 and f"trial {MAX_RETRY} re-queued as trial {MAX_RETRY + 1}" in requeued.stdout
    done = runner.invoke(app, ["study", "run", "boom"])
    assert done.exit_code == 0, done.output
    study = optuna.load_study(study_name="boom", storage=_journal(home))
    assert [t.state for t in study.trials][-1] == W.COMPLETE
    assert runner.invoke(app, ["study", "requeue", "boom"]).stdout.strip() == "0 point(s) of study boom re-queued"


class CleanUpFails(Reporter):
    """SIGTERM lands mid-member, and a clean-up on its way out raises over it (as Optuna's journal lock once did)."""

    def epoch_done(self, epoch, epochs, loss):
        if epoch == 2:
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                raise FileNotFoundError(2, "No such file or directory")  # noqa: B012 - what such a clean-up does


def test_an_error_raised_over_a_signal_still_stops_the_worker_as_interrupted_and_costs_the_point_nothing(home):
    from enstune.storage import retry
    from enstune.worker import Interrupted

    st.create("starsse-demo", name="cut", overrides=TINY + ["pruner='none'", "n_trials=1", "space.lr_mult.choices=[2]",
                                                             "space.epoch_mult.choices=[1]"])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Interrupted) as stopped:
            run("cut", reporter_factory=lambda budget: CleanUpFails())
    finally:  # a stopped worker leaves the default actions in place for its way out
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert stopped.value.signum == signal.SIGTERM
    assert stopped.value.outcome.startswith("trial 0 re-queued (attempt 2)"), stopped.value.outcome
    study = optuna.load_study(study_name="cut", storage=_journal(home))
    (failed,) = study.get_trials(states=(W.FAIL,))
    assert retry.ERROR_ATTR not in failed.system_attrs, "an interruption is no error of the point's"
    (queued,) = study.get_trials(states=(W.WAITING,))
    assert queued.system_attrs["errors"] == [] and queued.params == failed.params


def test_an_artifact_store_that_cannot_be_written_stops_the_worker_before_a_trial(home):
    from typer.testing import CliRunner

    from enstune.cli import app

    st.create("starsse-demo", name="ro", overrides=TINY)
    # sysfs takes no new files, not even from root (a read-only mount in containers).
    result = CliRunner().invoke(app, ["study", "run", "ro", "--artifacts", "/sys/kernel"])
    assert result.exit_code == 1 and "the artifact store cannot be written" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    states = {t.state for t in optuna.load_study(study_name="ro", storage=_journal(home)).trials}
    assert states == {W.WAITING}, "no trial was taken"


def test_a_study_deleted_under_a_running_worker_stops_it_with_one_line(home):
    st.create("starsse-demo", name="gone", overrides=SLOW)
    proc = _worker("gone")
    _wait_for_a_member(home, "gone", proc)
    st.delete("gone")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: study 'gone' was deleted while this worker ran it; the worker stops"


def test_a_worker_may_lengthen_the_studys_heartbeat_but_never_shorten_it(home):
    from typer.testing import CliRunner

    from enstune.cli import app

    st.create("starsse-demo", name="beat", overrides=TINY + ["heartbeat=30"])
    short = CliRunner().invoke(app, ["study", "run", "beat", "--heartbeat", "5"])
    assert short.exit_code == 1 and "--heartbeat must be in 30.." in short.stderr, short.output
    huge = CliRunner().invoke(app, ["study", "run", "beat", "--heartbeat", "99999999999999999999"])
    assert huge.exit_code == 1 and "at most 86400" in huge.stderr and "Traceback" not in huge.output
    assert {t.state for t in optuna.load_study(study_name="beat", storage=_journal(home)).trials} == {W.WAITING}


@pytest.mark.slow
def test_a_worker_killed_on_the_embedded_journal_has_its_trial_retried(home):
    st.create("starsse-demo", name="oom", overrides=SLOW)
    proc = _worker("oom")
    _wait_for_a_member(home, "oom", proc)
    proc.kill()  # SIGKILL, as the OOM killer sends: no handler runs
    proc.wait()
    study = optuna.load_study(study_name="oom", storage=_journal(home))
    (orphan,) = study.get_trials(states=(W.RUNNING,))
    assert orphan.system_attrs["heartbeat"]["pid"] == proc.pid

    finish = _worker("oom")  # finds the dead worker's trial at once (same host, process gone)
    out, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err
    study = optuna.load_study(study_name="oom", storage=_journal(home))
    assert study.trials[orphan.number].state == W.FAIL
    done = [t for t in study.trials if t.state == W.COMPLETE]
    assert len(done) == 3 and len({tuple(sorted(t.params.items())) for t in done}) == 3
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == orphan.number)
    assert retry.params == orphan.params and retry.user_attrs["resumed_from_member"] >= 2


def test_an_unreadable_demo_checkpoint_stops_the_worker_before_a_trial(home):
    from typer.testing import CliRunner

    from enstune.checks import load_checked
    from enstune.cli import app
    from enstune.members import Workspace

    st.create("starsse-demo", name="ck", overrides=TINY)
    path = Workspace(load_checked("starsse-demo").task, home).checkpoints.path(0)  # pre-trained on first use
    path.write_bytes(b"PK\x03\x04 not a checkpoint any more")
    result = CliRunner().invoke(app, ["study", "run", "ck"])
    assert result.exit_code == 1 and "cannot read checkpoint" in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {t.state for t in optuna.load_study(study_name="ck", storage=_journal(home)).trials} == {W.WAITING}


def test_journal_heartbeats_tell_stale_and_dead_workers_from_live_ones(home):
    import socket as sock

    from enstune.storage import open_storage
    from enstune.storage.heartbeat import HEARTBEAT_ATTR

    storage = open_storage(None, heartbeat=10)
    study = optuna.create_study(study_name="beats", storage=storage)
    trials = [study.ask() for _ in range(5)]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now, here = time.time(), sock.gethostname()
    beats = [{"time": now - 100, "host": "elsewhere", "pid": 1},  # silent for 10 intervals: stale
             {"time": now - 5, "host": "elsewhere", "pid": 1},  # beat half an interval ago: alive
             {"time": now - 5, "host": here, "pid": dead.pid, "start": None},  # its process is gone: stale
             {"time": now - 5, "host": here, "pid": os.getpid(), "start": None}]  # this process: alive
    for trial, beat in zip(trials, beats):
        storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, beat)
    # trials[4] has no heartbeat yet and started just now: alive
    stale = storage._get_stale_trial_ids(study._study_id)
    assert sorted(stale) == sorted([trials[0]._trial_id, trials[2]._trial_id])
    storage.record_heartbeat(trials[0]._trial_id)
    assert trials[0]._trial_id not in storage._get_stale_trial_ids(study._study_id), "a new heartbeat revives it"


def test_a_second_ctrl_c_exits_at_once_and_the_point_is_still_queued(home):
    st.create("starsse-demo", name="twice", overrides=SLOW)
    proc = _worker("twice")
    _wait_for_a_member(home, "twice", proc)
    proc.send_signal(signal.SIGINT)
    # The second Ctrl-C once the first has re-queued the point: on a loaded machine, one sent a few
    # milliseconds later may land before the first has written anything.
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not optuna.load_study(
            study_name="twice", storage=_journal(home)).get_trials(states=(W.FAIL,)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    # 130 from the CLI, or killed by the second SIGINT itself (-2) when it lands as Python shuts down
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err, err
    assert time.monotonic() - start < 30
    study = optuna.load_study(study_name="twice", storage=_journal(home))
    (failed,) = study.get_trials(states=(W.FAIL,))
    retries = [t for t in study.get_trials(states=(W.WAITING,)) if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retries) == 1 and retries[0].params == failed.params


def test_a_damaged_cache_entry_is_one_warning_line_and_retrained(home):
    tiny = TINY + ["n_trials=1", 'evaluate=["calibration"]']
    st.create("starsse-demo", name="first", overrides=tiny)
    run("first")
    entries = sorted((home / "artifacts").glob("member-*.pt"))
    damaged = bytearray(entries[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # inside the payload: the file still opens as a zip
    entries[0].write_bytes(bytes(damaged))
    st.create("starsse-demo", name="second", overrides=tiny)
    proc = _worker("second")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if "damaged" in line]
    # stderr is a pipe here: the warning is one timestamped log line
    assert len(warned) == 1 and warned[0].endswith(
        f"WARNING py.warnings: RuntimeWarning: member cache entry {entries[0].name} is damaged (digest mismatch); "
        f"retraining it")
    trial = optuna.load_study(study_name="second", storage=_journal(home)).trials[0]
    assert trial.user_attrs["cached_members"] == 2, "the two intact members came from the cache, one was retrained"


@pytest.mark.slow
def test_pre_emptions_never_use_up_the_retries_and_attempts_count_one_by_one(home):
    from enstune.storage import MAX_RETRY

    st.create("starsse-demo", name="pre", overrides=SLOW + ["n_trials=1", "space.lr_mult.choices=[2]",
                                                             "space.epoch_mult.choices=[1]"])
    for attempt in range(1, MAX_RETRY + 2):  # more pre-emptions than the retry limit
        proc = _worker("pre")
        _wait_for_a_member(home, "pre", proc)
        proc.send_signal(signal.SIGTERM if attempt % 2 else signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == (143 if attempt % 2 else 130), err
        assert err.strip().splitlines()[-1].startswith(
            f"interrupted: trial {attempt - 1} re-queued (attempt {attempt + 1})"), err
    finish = _worker("pre")
    out, err = finish.communicate(timeout=600)
    assert finish.returncode == 0, err
    study = optuna.load_study(study_name="pre", storage=_journal(home))
    (done,) = study.get_trials(states=(W.COMPLETE,))
    assert done.system_attrs["attempt"] == MAX_RETRY + 2 and done.system_attrs["errors"] == []
