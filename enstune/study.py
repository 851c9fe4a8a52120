"""Optuna glue: spec → study (its grid queued), trial → TrialConfig, and the study read back."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import pathlib
import random
import time
import unicodedata
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from enstune.checks import check_new, check_spec, load_checked, read_params, study_settings
from enstune.claims import NAME_LIMIT, SUFFIX, claims_owner, companion_name, companions
from enstune.config import Param, StudySpec, TrialConfig, build, is_study_file, migrate, spec_from_dict, to_dict
from enstune.errors import ConfigError, EnstuneError
from enstune.methods import get_method
from enstune.optim import with_options
from enstune.storage import bulk, home_dir, mask_url, open_storage, resolve_url
from enstune.storage.optuna_private import storage_of, study_id, trial_id

SPEC_ATTR = "spec"
RECIPE_PARAMS = ("epochs", "lr", "weight_decay")
READY_TIMEOUT = 30.0  # seconds a worker waits for a concurrent `study create` to finish

optuna.logging.set_verbosity(optuna.logging.WARNING)
# A failing trial's error reaches the user once, as the worker's one-line error; Optuna's own
# report of it would add a traceback.
logging.getLogger("optuna.study._optimize").addFilter(lambda record: " failed with " not in record.getMessage())


WHOLE_AXES = frozenset({"seed", "freeze", "epochs"})  # sampled as integers; every other range as floats


def _suggest(trial: optuna.Trial, name: str, p: Param, whole: bool = False) -> Any:
    if p.choices:
        return trial.suggest_categorical(name, list(p.choices))
    if whole or name in WHOLE_AXES:
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step)


def _same_spec_dict(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as today's code writes it (keys added since get their defaults); as stored if it no longer loads."""
    try:
        return to_dict(spec_from_dict(stored))
    except EnstuneError:
        return stored


def trial_config(trial: optuna.Trial, spec: StudySpec) -> TrialConfig:
    """Sample the spec's search space into a TrialConfig; a trial samples only what its method reads."""
    method = _suggest(trial, "method", spec.space["method"]) if "method" in spec.space else spec.method
    read = read_params(spec, method)
    declared = study_settings(spec)
    values = {name: _suggest(trial, name, p, name in declared and declared[name].kind is int)
              for name, p in spec.space.items() if name in read and name != "method"}
    # An axis named as one of the plugins' options sets that option for the trial; each value as its setting takes it
    # (a whole number where a float is due is one), so that equal values give equal member keys.
    # (An option no plugin declares is left as it is: a spec stored by an earlier enstune, read as stored, may hold one.)
    options = {k: declared[k].check(k, v) if k in declared else v
               for k, v in (spec.options | {k: values.pop(k) for k in list(values) if k in declared}).items()}
    recipe = dataclasses.replace(spec.finetune, **{k: values.pop(k) for k in RECIPE_PARAMS if k in values})
    return TrialConfig(task=spec.task, recipe=with_options(recipe, options), method=method, members=spec.members,
                       regularizer=spec.regularizer, tap=spec.tap, options=tuple(sorted(options.items())), **values)


def load_spec(study: optuna.Study, wait: float = 0.0) -> StudySpec:
    """The StudySpec stored with ``study``, waiting up to ``wait`` seconds for a creator to store it."""
    return stored_spec(_spec_data(storage_of(study), study_id(study), study.study_name, wait), study.study_name)


def spec_of(storage: Any, name: str, wait: float = 0.0) -> StudySpec:
    """``load_spec`` of study ``name``, read through ``storage`` with ``_load``'s refusals, no Study loaded."""
    # A worker needs the spec before it can load its study (the sampler, pruner and heartbeat come from it).
    return stored_spec(_spec_data(storage, _study_id(storage, name), name, wait), name)


def missing(name: str) -> EnstuneError:
    """The one-line error of a study name that this storage does not hold."""
    return EnstuneError(f"no study named {name!r} in this storage")


def _study_id(storage: Any, name: str) -> int:
    """Study ``name``'s id; refused when there is none or it holds another study's member claims."""
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        raise missing(name) from None
    if (owner := claims_owner(storage.get_study_system_attrs(sid))) is not None:
        raise EnstuneError(f"{name!r} holds the member claims of study {owner!r}; it is not a study of its own")
    return sid


def _spec_data(storage: Any, sid: int, name: str, wait: float) -> dict[str, Any]:
    """The stored spec dict of study ``sid``; a study being created by another process gets ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (data := storage.get_study_user_attrs(sid).get(SPEC_ATTR)) is None:
        if time.monotonic() > deadline:
            raise EnstuneError(f"study {name!r} has no enstune spec (not created by enstune, or its "
                               f"creation was interrupted: delete it with `enstune study delete`)")
        time.sleep(0.2)
    return data


def stored_spec(data: dict[str, Any], name: str) -> StudySpec:
    """A stored spec as a StudySpec; one an earlier enstune stored that today's checks refuse is read as stored.

    Checks grow stricter between versions (a range narrowed, a combination refused at create): a
    study created before them is the users' data, so it is still shown and run, with one warning
    naming what today's checks say. A spec whose keys or types no longer fit is refused.
    """
    try:
        return check_spec(spec_from_dict(data))
    except EnstuneError as exc:
        try:
            spec = build(StudySpec, migrate(data))  # the stored types, without today's ranges and cross-checks
        except EnstuneError:
            raise exc from None
        warnings.warn(f"study {name!r} was created by an earlier enstune and today's checks refuse its spec ({exc}); "
                      f"it is read as stored", stacklevel=2)
        return spec


def _load(name: str, storage: Any, sampler: optuna.samplers.BaseSampler | None = None,
          pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    _study_id(storage, name)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:  # deleted in between
        raise missing(name) from None


def budget(spec: StudySpec) -> int:
    """The study-wide number of trials: ``n_trials``, and never more than a grid holds."""
    return min(spec.n_trials, len(grid_points(spec))) if spec.sampler == "grid" and spec.space else spec.n_trials


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every distinct point of a grid space, in a seeded shuffled order (early trials cover the grid).

    In a study of several methods a point keeps only what its method reads: Local DE's trials
    do not repeat once per cycle multiplier.
    """
    names = list(spec.space)
    points: list[dict[str, Any]] = []
    for values in itertools.product(*(spec.space[n].choices for n in names)):
        point = dict(zip(names, values))
        read = read_params(spec, point.get("method", spec.method))
        if (point := {k: v for k, v in point.items() if k in read}) not in points:
            points.append(point)
    random.Random(spec.seed).shuffle(points)
    return points


def _unsourced(data: dict[str, Any]) -> dict[str, Any]:
    """A spec dict without its ``source`` note: the same spec made from a file or by --set is the same study."""
    return {k: v for k, v in data.items() if k != "source"}


def check_name(name: str) -> None:
    """Refuse a study name that would be read back wrong: in paths, on one line, as member claims, or too long."""
    # Names become file and artifact names, log lines and table cells: a "/" or ".." would reach
    # outside a directory, a newline or other control character would forge a line.
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"study name {name!r} holds the control character {bad!r}; use printable characters")
    if "/" in name or ".." in name:
        raise ConfigError(f"study name {name!r} holds '/' or '..'; names may not look like paths")
    if name.endswith(SUFFIX):
        raise ConfigError(f"study name {name!r} ends in {SUFFIX!r}, which names the member claims of a study")
    if len(name) > NAME_LIMIT:  # what a database's column holds: every storage keeps to it, so studies can move
        raise ConfigError(f"study name is {len(name)} characters; at most {NAME_LIMIT}")


def cheapest_first(spec: StudySpec, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``points`` by the epochs their plans train, cheapest first (the given order among equals).

    A pruner judges a trial against the best one so far: cheap trials set that bar early, and the
    dear ones are cut as soon as they cannot reach it.
    """

    def epochs(point: dict[str, Any]) -> int:
        cfg = trial_config(optuna.trial.FixedTrial(point), spec)
        return sum(job.recipe.epochs for job in get_method(cfg.method).plan(cfg))

    return sorted(points, key=epochs)


def create(template: str, name: str | None = None, storage_url: str | None = None,
           overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, bool]:
    """Create a study from a template or a study file (its content stored, never its path); return (name, created).

    Same name and spec again: a no-op. A study file's study is named after the file by default.

    Safe under races: of many concurrent creators exactly one creates the study and queues
    its grid; the spec is stored last, and is what marks the study ready for workers.
    """
    spec = load_checked(template, overrides)  # checked before anything touches the storage
    for line in check_new(spec, home_dir()):
        warnings.warn(line, stacklevel=2)
    if name is not None and not name.strip():
        raise ConfigError("--name must not be empty")
    name = name or (pathlib.Path(template).stem if is_study_file(template) else template)
    check_name(name)
    storage = open_storage(storage_url)
    wanted = to_dict(spec)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        if _unsourced(_same_spec_dict(_spec_data(storage, _study_id(storage, name), name, READY_TIMEOUT))) != \
                _unsourced(wanted):
            raise EnstuneError(f"study {name!r} already exists with a different spec") from None
        return name, False
    try:
        if spec.sampler == "grid" and spec.space:
            for params in cheapest_first(spec, grid_points(spec)[:budget(spec)]):
                study.enqueue_trial(params)
        study.set_user_attr(SPEC_ATTR, wanted)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return name, True


@dataclasses.dataclass(frozen=True)
class Census:
    """A study's trials counted by state, and its best value (None before any trial completes)."""

    states: collections.Counter[TrialState]
    best: float | None

    @classmethod
    def of(cls, tally: bulk.Tally) -> Census:
        """The census a storage counted (see ``enstune.storage.bulk``)."""
        return cls(collections.Counter(tally[0]), tally[1])


def census(study: optuna.Study, below: int | None = None) -> Census:
    """How many trials of ``study`` are in each state (those numbered below ``below``, if given), and its best value.

    One query on a database, one request through the storage proxy; other storages read the trials.
    """
    return Census.of(bulk.census(storage_of(study), study_id(study), below,
                                 study.direction == optuna.study.StudyDirection.MAXIMIZE))


def trial_states(study: optuna.Study, below: int | None = None) -> collections.Counter[TrialState]:
    """How many trials of ``study`` are in each state (only those numbered below ``below``, if given)."""
    return census(study, below).states


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` on ``trial``: in one transaction (or request) where the storage can, else one by one."""
    bulk.set_trial_attrs(storage_of(trial.study), trial_id(trial), user=attrs)


def set_results(trial: optuna.Trial, attrs: dict[str, Any]) -> Census | None:
    """Set ``attrs`` on ``trial`` as ``set_user_attrs`` does; its study's census where it comes in the same round trip.

    On a database or through the storage proxy it does; on the embedded journal it would be a read
    of its own, so None.
    """
    study = trial.study
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    counted = bulk.set_trial_attrs(storage_of(study), trial_id(trial), user=attrs,
                                  census_of=(study_id(study), maximize))
    return None if counted is None else Census.of(counted)


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, or None before any trial completes."""
    try:
        return study.best_value  # one query on a database
    except ValueError:  # no trial has completed yet
        return None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One JSON-serialisable row per trial: number, state, params, value and user attrs."""
    return [
        {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
         "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}, "user_attrs": t.user_attrs}
        for t in study.get_trials(deepcopy=False)
    ]


def failed_points(study: optuna.Study) -> list[str]:
    """One line per point of ``study`` that failed for good: which trial, its parameters, and why."""
    from enstune.storage import retry

    return [f"trial {t.number} ({', '.join(f'{k}={v}' for k, v in t.params.items())}) failed for good: {retry.why(t)}"
            for t in retry.failed_for_good(study.get_trials(deepcopy=False))]


def show(name: str, storage_url: str | None = None) -> dict[str, Any]:
    """A study's spec, summary and trials, and the points that failed for good."""
    study = _load(name, open_storage(storage_url))
    spec = load_spec(study)
    rows = trial_rows(study)
    best = best_value(study)
    failed = sum(r["state"] == TrialState.FAIL.name for r in rows)
    # A failed trial's point is queued again as a new trial: only the others count against the budget.
    return {"name": name, "storage": mask_url(resolve_url(storage_url)), "spec": to_dict(spec),
            "n_trials": len(rows), "counted": len(rows) - failed, "failed": failed, "budget": budget(spec),
            "best_value": best, "trials": rows, "failed_for_good": failed_points(study)}


def list_studies(storage_url: str | None = None) -> list[dict[str, Any]]:
    """Name, template, trial counts and best value of every study in the storage."""
    out = []
    storage = open_storage(storage_url)
    hidden = companions(storage)
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        if s.study_name in hidden:
            continue
        spec = s.user_attrs.get(SPEC_ATTR, {})
        out.append({"name": s.study_name, "template": spec.get("template"), "trials": s.n_trials,
                    "best_value": s.best_trial.value if s.best_trial else None})
    return out


def delete(name: str, storage_url: str | None = None) -> None:
    """Delete study ``name`` and its trials, and the study of its member claims."""
    storage = open_storage(storage_url)
    _load(name, storage)
    optuna.delete_study(study_name=name, storage=storage)
    with contextlib.suppress(KeyError):  # never claimed a member, or deleted by a concurrent delete
        companion = storage.get_study_id_from_name(companion_name(name))
        if claims_owner(storage.get_study_system_attrs(companion)) == name:  # never a study of its own
            storage.delete_study(companion)
