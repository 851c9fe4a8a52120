"""A worker opens its storage once and loads its study once, and its trial still records heartbeats."""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

import enstune.storage
from cli_helpers import TINY
from enstune import study as st
from enstune import worker
from enstune.errors import EnstuneError
from enstune.storage import enable_heartbeat, open_storage
from enstune.storage.heartbeat import HEARTBEAT_ATTR, WORKER_ATTR
from enstune.storage.optuna_private import is_heartbeat_enabled, storage_of, study_id, trial_id, uncached
from enstune.storage.proxy import server
from enstune.storage.retry import Requeue

# One trial of two one-epoch members; the study beats every 7 s, a worker may ask for longer.
ONE = TINY + ["n_trials=1", "members=2", "finetune.epochs=1", 'evaluate=["calibration"]', "heartbeat=7"]


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """What ``open_storage`` opened and ``optuna.load_study`` loaded from here on: each still does its own work."""
    calls: dict[str, list[Any]] = {"open_storage": [], "load_study": []}

    def wrap(name: str, real: Any) -> Any:  # noqa: ANN401 - a function
        def call(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - what the real one returns
            calls[name].append(real(*args, **kwargs))
            return calls[name][-1]

        return call

    opening, loading = wrap("open_storage", enstune.storage.open_storage), wrap("load_study", optuna.load_study)
    # open_storage_patiently calls the package's name; the worker holds one of its own.
    monkeypatch.setattr(enstune.storage, "open_storage", opening)
    monkeypatch.setattr(worker, "open_storage", opening)
    monkeypatch.setattr(optuna, "load_study", loading)
    monkeypatch.setattr(optuna.study, "load_study", loading)
    return calls


def _over(turned_on: Any, opened: Any) -> bool:
    """Whether ``turned_on`` is ``opened``, or (journal, proxy client) its heartbeat class over its state."""
    return turned_on is opened or all(vars(turned_on)[k] is v for k, v in vars(opened).items())


def _run_once(calls: dict[str, list[Any]], name: str, url: str | None, heartbeat: int | None) -> optuna.Study:
    """Run study ``name``'s one trial; check that the worker opened its storage and loaded its study once each."""
    st.create("starsse-demo", name=name, storage_url=url, overrides=ONE)  # study.py's open_storage: not counted
    calls["open_storage"].clear()
    calls["load_study"].clear()
    study = worker.run(name, storage_url=url, heartbeat=heartbeat)
    (opened,) = calls["open_storage"]
    (loaded,) = calls["load_study"]
    served = uncached(storage_of(study))
    assert loaded is study and _over(served, opened), "the study loaded is on the storage opened"
    assert is_heartbeat_enabled(served) and served.get_heartbeat_interval() == (heartbeat or 7)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler), "the spec's sampler (a grid study draws randomly)"
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    beat = trial.system_attrs[HEARTBEAT_ATTR]
    assert beat["trial"] == trial_id(trial) and beat["pid"] == os.getpid() and beat["host"] == socket.gethostname()
    assert trial.user_attrs[WORKER_ATTR] == f"{socket.gethostname()}:{os.getpid()}"
    return study


def test_on_the_embedded_journal_a_worker_opens_once_loads_once_and_beats(counted, home):
    _run_once(counted, "once", None, None)


def test_the_run_command_publishes_through_the_storage_and_study_its_worker_holds(counted, home, monkeypatch):
    import optuna_dashboard
    from typer.testing import CliRunner

    from enstune.cli import app

    st.create("starsse-demo", name="once-cli", overrides=ONE)
    opened, real = [], optuna.storages.JournalStorage.__init__

    def journal(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - the storage's own arguments
        opened.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.JournalStorage, "__init__", journal)
    counted["load_study"].clear()
    result = CliRunner().invoke(app, ["study", "run", "once-cli"])
    assert result.exit_code == 0, result.output
    (loaded,) = counted["load_study"]
    assert len(opened) == 1, "the pictures and the note are written through the worker's own storage"
    assert "Regimes of once-cli" in optuna_dashboard.get_note(loaded), "and they are written"


def test_a_longer_heartbeat_asked_for_is_the_one_turned_on(counted, home):
    _run_once(counted, "longer", None, 9)


def test_on_postgresql_a_worker_opens_once_loads_once_and_beats_into_optunas_table(counted, home, pg):
    study = _run_once(counted, "once-pg", pg.url(), None)
    (opened,) = counted["open_storage"]
    assert uncached(storage_of(study)) is opened, "a database's storage is turned on as it is"
    assert (opened.heartbeat_interval, opened.grace_period) == (7, 14)
    assert isinstance(opened.get_heartbeat_stale_trial_callback(), Requeue)
    ids = [trial_id(t) for t in study.get_trials(deepcopy=False)]
    with psycopg.connect(pg.url().replace("postgresql+psycopg", "postgresql")) as c:
        rows = c.execute("SELECT trial_id FROM trial_heartbeats WHERE trial_id = ANY(%s)", (ids,)).fetchall()
    assert {r[0] for r in rows} == set(ids), "workers on the database read Optuna's heartbeat table"
    assert study_id(study) == opened.get_study_id_from_name("once-pg")


def _same(turned_on: Any, opened_with: Any) -> None:
    """``turned_on`` (``enable_heartbeat``'s) is what ``open_storage(url, heartbeat)`` opens: class, state, interval."""
    assert type(turned_on) is type(opened_with)
    assert turned_on.__dict__.keys() == opened_with.__dict__.keys()
    assert {k: type(v) for k, v in vars(turned_on).items()} == {k: type(v) for k, v in vars(opened_with).items()}
    assert is_heartbeat_enabled(turned_on)
    assert turned_on.get_heartbeat_interval() == opened_with.get_heartbeat_interval()
    assert type(turned_on.get_heartbeat_stale_trial_callback()) is Requeue


def test_heartbeats_turned_on_are_the_storage_opened_with_them(home, tmp_path):
    for url in (None, f"sqlite:///{tmp_path / 'db.sqlite'}"):
        opened = open_storage(url)
        assert not is_heartbeat_enabled(opened)
        turned_on = enable_heartbeat(opened, 5)
        assert _over(turned_on, opened)
        _same(turned_on, open_storage(url, heartbeat=5))
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "p.log")))
    proxied = server(journal, "127.0.0.1", port := _free_port())
    proxied.start()
    url = f"grpc://127.0.0.1:{port}"
    opened, beating = open_storage(url), open_storage(url, heartbeat=5)
    try:
        turned_on = enable_heartbeat(opened, 5)
        assert _over(turned_on, opened)
        _same(turned_on, beating)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Optuna's: heartbeats are meant for optimize
            trial = optuna.create_study(study_name="p", storage=turned_on).ask()
        turned_on.record_heartbeat(trial_id(trial))  # through the proxy, as the attribute
        assert turned_on.get_trial(trial_id(trial)).system_attrs[HEARTBEAT_ATTR]["trial"] == trial_id(trial)
    finally:
        turned_on.close()
        beating.close()
        proxied.stop(0)
    with pytest.raises(EnstuneError, match="--heartbeat must be at least 1 second, got 0"):
        enable_heartbeat(open_storage(None), 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
