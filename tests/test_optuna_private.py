"""The Optuna names that are not its public API behave as enstune relies on them (``enstune.storage.optuna_private``)."""

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from enstune.storage import optuna_private as op


@pytest.fixture(params=["journal", "sqlite"])
def storage(request, tmp_path):
    if request.param == "journal":
        return JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    return RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_a_study_and_its_trials_as_enstune_reads_them(storage):
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    assert op.study_id(study) == storage.get_study_id_from_name("s")
    assert op.storage_of(study).get_study_id_from_name("s") == op.study_id(study)
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    assert op.as_asked(trial).system_attrs["fixed_params"] == {"x": 1.0}  # as read when asked for
    trial.set_user_attr("k", 1)
    trial.report(0.5, 2)
    asked = op.as_asked(trial)
    assert asked.user_attrs["k"] == 1 and asked.intermediate_values == {2: 0.5}  # this worker's writes
    assert op.trial_id(trial) == op.trial_id(study.trials[0]) == asked._trial_id
    assert op.storage_of(study).get_trial(op.trial_id(trial)).number == trial.number


def test_heartbeats_and_the_rdb_parts(tmp_path):
    rdb = RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_interval=60)
    assert op.is_heartbeat_enabled(rdb) and isinstance(rdb, op.BaseHeartbeat)
    assert not op.is_heartbeat_enabled(JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    optuna.create_study(study_name="s", storage=rdb)
    models = op.rdb_models()
    with op.scoped_session(rdb.scoped_session) as session:
        assert session.query(models.StudyModel).filter_by(study_name="s").one().study_name == "s"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert isinstance(op.storage_of(study), op.CachedStorage)


def test_the_journal_and_grpc_parts_are_where_they_were(tmp_path):
    assert op.JournalOperation.CREATE_STUDY.value == 0
    assert op.get_lock_file is not None and op.NullHeartbeatThread is not None
    stub, cache = op.grpc_client()
    assert stub.__name__ == "StorageServiceStub" and cache.__name__ == "GrpcClientCache"
    assert callable(op.grpc_server_factory())


def test_heartbeats_set_on_an_opened_rdb_storage_are_the_constructors(tmp_path):
    import time
    import warnings

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    failed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        built = RDBStorage(url, heartbeat_interval=1, grace_period=1,
                           heartbeat_stale_trial_callback=lambda study, trial: failed.append(trial.number))
    opened = RDBStorage(url)
    study = optuna.create_study(study_name="s", storage=opened)
    trial = study.ask()  # before heartbeats: Optuna warns of an ask on a storage with heartbeats
    assert not op.is_heartbeat_enabled(opened)
    op.set_heartbeat(opened, 1, 1, built.get_heartbeat_stale_trial_callback())
    assert opened.__getstate__() == built.__getstate__(), "the constructor keeps nothing else of its heartbeat"
    assert op.is_heartbeat_enabled(opened) and opened.get_heartbeat_interval() == 1
    # Optuna's stale check reads them: a trial silent past the grace period fails, its callback called.
    opened.record_heartbeat(op.trial_id(trial))
    time.sleep(2.5)  # the database's clock counts whole seconds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and failed == [0]
