"""An RDBStorage that rides out a database restart: lost connections are retried with back-off."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from enstune.errors import EnstuneError

log = logging.getLogger("enstune.storage")

# The backend calls Optuna's storage cache makes; each opens its own session, so a retry
# repeats one whole transaction. Public methods that only delegate to these are left alone.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "_create_new_trial", "_set_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials", "_get_best_trial_id",
    "record_heartbeat", "_get_stale_trial_ids", "set_trial_user_attrs", "count_trials",
    "get_trial_system_attrs",
)


def caused_by(exc: BaseException, match: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or any exception in its cause/context chain satisfies ``match``."""
    seen: BaseException | None = exc
    while seen is not None:
        if match(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused database connection."""
    import sqlalchemy.exc as sa

    return caused_by(exc, lambda e: isinstance(e, (sa.OperationalError, sa.InterfaceError))
                     or (isinstance(e, sa.DBAPIError) and e.connection_invalidated))


def _retrying(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.patience
        delay, failed = 0.5, False
        while True:
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # The first attempt may have committed before its connection dropped.
                if failed and name == "set_trial_state_values" and self._state_is(args, kwargs):
                    return True
                raise
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                failed = True
                log.warning("storage unreachable (%s); retrying %s in %.1f s", type(exc).__name__, name, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    return call


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls wait out a lost database for up to ``patience`` seconds."""

    patience: float = 600.0

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        """Optuna's, with a name too long for the database refused in one line (not a raw DataError)."""
        from optuna.storages._rdb import models

        limit = models.StudyModel.__table__.c.study_name.type.length
        if study_name is not None and len(study_name) > limit:
            raise EnstuneError(f"study name is {len(study_name)} characters; at most {limit} fit the "
                               f"storage's study_name column")
        return super().create_new_study(directions, study_name)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes of one trial in one transaction.

        Optuna commits each attribute on its own (a few milliseconds and an fsync each); a
        trial's results are a dozen attributes. On PostgreSQL and SQLite this is one multi-row
        form of the upsert Optuna issues per key; elsewhere Optuna's per-key path.
        """
        import json

        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy.dialects import postgresql, sqlite

        model = models.TrialUserAttributeModel
        inserts = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
        with _create_scoped_session(self.scoped_session, True) as session:
            if self.engine.name not in inserts or not attrs:
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(session, model, trial_id, key, value)
                return
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            # One multi-row upsert, the statement Optuna issues per key on these databases.
            insert = inserts[self.engine.name](model).values(
                [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])
            session.execute(insert.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                         set_={"value_json": insert.excluded.value_json}))

    def count_trials(self, study_id: int, below: int | None = None) -> dict[TrialState, int]:
        """A study's trials by state, only those numbered below ``below`` if given: one query.

        Reading the trials themselves to count them costs half a dozen queries (one per child
        table) and grows with the study.
        """
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        trial = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            query = session.query(trial.state, sqlalchemy.func.count()).filter(trial.study_id == study_id)
            if below is not None:
                query = query.filter(trial.number < below)
            return {TrialState(state): n for state, n in query.group_by(trial.state)}

    def _state_is(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        trial_id = args[0] if args else kwargs["trial_id"]
        state = args[1] if len(args) > 1 else kwargs["state"]
        return RDBStorage.get_trial(self, trial_id).state == TrialState(state)


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(_name, getattr(ResilientRDBStorage, _name)))
