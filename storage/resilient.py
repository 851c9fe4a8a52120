"""An RDBStorage that rides out a database restart: lost connections are retried with back-off."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from enstune.errors import EnstuneError
from enstune.storage.bulk import Tally
from enstune.storage.trials import read_trial, read_trials
from enstune.storage.optuna_private import rdb_models, scoped_session

log = logging.getLogger("enstune.storage")

# The backend calls Optuna's storage cache makes; each opens its own session, so a retry
# repeats one whole transaction. Public methods that only delegate to these are left alone.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "_create_new_trial", "_set_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials", "_get_best_trial_id",
    "record_heartbeat", "_get_stale_trial_ids", "set_trial_attrs", "census", "heartbeats",
    "get_trial_system_attrs",
)


_ONE_TRY = threading.local()  # per thread: whether a lost connection is raised at once rather than waited out


@contextlib.contextmanager
def one_try() -> Iterator[None]:
    """Within, on this thread: a call that loses its connection raises at once (the caller keeps its own pace)."""
    before = getattr(_ONE_TRY, "on", False)
    _ONE_TRY.on = True
    try:
        yield
    finally:
        _ONE_TRY.on = before


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


def dialect_upsert(dialect: str) -> Callable[..., Any] | None:
    """The dialect's INSERT that takes ON CONFLICT DO UPDATE (PostgreSQL, SQLite), or None."""
    from sqlalchemy.dialects import postgresql, sqlite

    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)


def _tally(rows: list[Any]) -> Tally:
    """A census from the rows of ``_census``: (state, trials, best value)."""
    return ({TrialState(state): n for state, n, _ in rows},
            next((best for state, _, best in rows if TrialState(state) == TrialState.COMPLETE), None))


# Statements built once: SQLAlchemy caches a statement's compiled form, not the work of building it
# (and compiles a multi-row VALUES anew each time: rows go as the parameters of one statement instead).
@functools.cache
def _attr_upsert(dialect: str, table: str) -> Any:  # noqa: ANN401 - a SQLAlchemy Insert
    """The upsert Optuna issues per key into attribute table ``table``, run once with every row as parameters."""
    models = rdb_models()

    insert = dialect_upsert(dialect)(models.BaseModel.metadata.tables[table])
    return insert.on_conflict_do_update(index_elements=["trial_id", "key"],
                                        set_={"value_json": insert.excluded.value_json})


@functools.cache
def _census(maximize: bool, below: bool) -> Any:  # noqa: ANN401 - a SQLAlchemy Select
    """Trials of study ``:study_id`` (numbered below ``:below``) by state, and the best value of the COMPLETE ones."""
    import sqlalchemy as sa
    models = rdb_models()

    trial, value = models.TrialModel.__table__, models.TrialValueModel.__table__
    # A COMPLETE trial's value by its index, not a join: a join's plan may read every study's values.
    of_trial = (sa.select(value.c.value).where(value.c.trial_id == trial.c.trial_id, value.c.objective == 0)
                .scalar_subquery())
    rows = (sa.select(trial.c.state, sa.case((trial.c.state == TrialState.COMPLETE, of_trial)).label("value"))
            .where(trial.c.study_id == sa.bindparam("study_id")))
    if below:
        rows = rows.where(trial.c.number < sa.bindparam("below"))
    study = rows.subquery()
    best = sa.func.max if maximize else sa.func.min
    return sa.select(study.c.state, sa.func.count(), best(study.c.value)).group_by(study.c.state)


@functools.cache
def _trial_state() -> Any:  # noqa: ANN401 - a SQLAlchemy Select
    """The state of trial ``:trial_id``."""
    import sqlalchemy as sa
    models = rdb_models()

    trial = models.TrialModel.__table__
    return sa.select(trial.c.state).where(trial.c.trial_id == sa.bindparam("trial_id"))


@functools.cache
def _running_beats() -> Any:  # noqa: ANN401 - a SQLAlchemy Select
    """Each running trial of study ``:study_id`` with a row in Optuna's heartbeat table: its last beat, now, and the
    heartbeat attribute that names who beats (NULL where there is none)."""
    import sqlalchemy as sa
    models = rdb_models()

    trial, beat = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    attr = models.TrialSystemAttributeModel.__table__
    return (sa.select(trial.c.trial_id, beat.c.heartbeat, sa.func.now(), attr.c.value_json)
            .select_from(trial.join(beat, beat.c.trial_id == trial.c.trial_id)
                         .outerjoin(attr, sa.and_(attr.c.trial_id == trial.c.trial_id, attr.c.key == "heartbeat")))
            .where(trial.c.state == TrialState.RUNNING, trial.c.study_id == sa.bindparam("study_id")))


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
                if not is_transient(exc) or getattr(_ONE_TRY, "on", False) or time.monotonic() + delay > deadline:
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
        models = rdb_models()

        limit = models.StudyModel.__table__.c.study_name.type.length
        if study_name is not None and len(study_name) > limit:
            raise EnstuneError(f"study name is {len(study_name)} characters; at most {limit} fit the "
                               f"storage's study_name column")
        return super().create_new_study(directions, study_name)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """Optuna's, read as plain rows (``enstune.storage.trials``)."""
        
        with scoped_session(self.scoped_session) as session:
            return read_trial(session, trial_id)

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """Optuna's (what its storage cache reads), read as plain rows (``enstune.storage.trials``)."""
        models = rdb_models()
        
        with scoped_session(self.scoped_session) as session:
            models.StudyModel.find_or_raise_by_id(study_id, session)
            return read_trials(session, study_id, states, included_trial_ids, trial_id_greater_than)

    def set_trial_attrs(self, trial_id: int, user: dict[str, Any] | None = None, system: dict[str, Any] | None = None,
                        census_of: tuple[int, bool] | None = None) -> Tally | None:
        """Several user and system attributes of one trial in one transaction; with ``census_of``, a census too.

        Optuna commits each attribute on its own (a few milliseconds and an fsync each); a
        trial's results are a dozen attributes. On PostgreSQL and SQLite the upsert Optuna issues
        per key runs once for all of them; elsewhere Optuna's per-key statements. ``census_of`` =
        (study id, maximize): the study's census (see ``census``), in the same transaction.
        """
        
        with scoped_session(self.scoped_session, True) as session:
            state = session.execute(_trial_state(), {"trial_id": trial_id}).scalar_one_or_none()
            if state is None:
                raise KeyError(f"no trial with id {trial_id}")
            self.check_trial_is_updatable(trial_id, state)
            self._write_attrs(session, trial_id, user or {}, system or {})
            if census_of is None:
                return None
            return _tally(session.execute(_census(census_of[1], False), {"study_id": census_of[0]}).all())

    def _write_attrs(self, session: Any, trial_id: int, user: dict[str, Any], system: dict[str, Any]) -> None:
        """Upsert a trial's attributes within ``session`` (its trial already checked to be updatable)."""
        import json

        models = rdb_models()

        for model, attrs in ((models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
            if not attrs:
                continue
            if dialect_upsert(self.engine.name) is None:
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(session, model, trial_id, key, value)
                continue
            rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
            session.execute(_attr_upsert(self.engine.name, model.__tablename__), rows)

    def census(self, study_id: int, below: int | None = None, maximize: bool = True) -> Tally:
        """A study's trials by state (only those numbered below ``below``, if given) and its best value: one query.

        Reading the trials themselves to count them costs half a dozen queries (one per child
        table) and grows with the study. The best value is the best finite one of a COMPLETE trial.
        """
        
        with scoped_session(self.scoped_session) as session:
            params = {"study_id": study_id} if below is None else {"study_id": study_id, "below": below}
            return _tally(session.execute(_census(maximize, below is not None), params).all())

    def heartbeat_ages(self, study_id: int) -> dict[int, float]:
        """Seconds since the last heartbeat in Optuna's table of each running trial of the study that has one."""
        return {trial_id: age for trial_id, (age, _) in self.heartbeats(study_id).items()}

    def heartbeats(self, study_id: int) -> dict[int, tuple[float, dict[str, Any] | None]]:
        """Each running trial of the study with a heartbeat: seconds since it last beat, and who beats (its attribute).

        A trial's row is written by its own beats alone (a retry starts without one), so a trial that
        has just started is not in it, and never stale by it. No trial can beat while the database is
        down: on PostgreSQL a trial's silence counts from the server's start when that came later
        than its last beat, so that a restart fails no live worker's trial.
        """
        import json

        import sqlalchemy as sa
        
        with scoped_session(self.scoped_session) as session:
            rows = session.execute(_running_beats(), {"study_id": study_id}).all()
            up = None
            if rows and self.engine.name == "postgresql":
                now, started = session.execute(sa.select(sa.func.now(), sa.func.pg_postmaster_start_time())).one()
                up = (now - started).total_seconds()
        out = {}
        for trial_id, at, now, owner in rows:
            # As Optuna compares them: the database's clock, without its time zone.
            age = (now.replace(tzinfo=None) - at).total_seconds()
            out[trial_id] = (age if up is None else min(age, up), json.loads(owner) if owner else None)
        return out

    def _state_is(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        trial_id = args[0] if args else kwargs["trial_id"]
        state = args[1] if len(args) > 1 else kwargs["state"]
        return RDBStorage.get_trial(self, trial_id).state == TrialState(state)


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(_name, getattr(ResilientRDBStorage, _name)))
