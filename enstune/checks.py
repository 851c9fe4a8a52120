"""What a study is checked against where it is created: the registries' names and the axes its methods read."""

from __future__ import annotations

from enstune.config import (LATER_MEMBER_AXES, SHARED_PARAMS, TRIAL_PARAMS, StudySpec, TrialConfig, load_template,
                            study_methods)
from enstune.data import list_datasets
from enstune.errors import ConfigError
from enstune.evaluation.evaluators import EVALUATORS
from enstune.methods import get_method
from enstune.optim import OPTIMIZERS
from enstune.pruning import PRUNERS, SAMPLERS
from enstune.regularizers import get_regularizer
from enstune.schedules import SCHEDULES


def check_spec(spec: StudySpec) -> StudySpec:
    """Check every name in ``spec`` against its registry, and that each search axis is read; return it."""
    if spec.task.dataset not in list_datasets():
        raise ConfigError(f"unknown dataset {spec.task.dataset!r}; known: {', '.join(list_datasets())}")
    OPTIMIZERS.get(spec.finetune.optimizer)
    SAMPLERS.get(spec.sampler)
    PRUNERS.get(spec.pruner)
    SCHEDULES.get(spec.finetune.schedule)
    for name in spec.evaluate:
        EVALUATORS.get(name)
    if spec.regularizer != "none":
        get_regularizer(spec.regularizer)
    methods = study_methods(spec)
    known = sorted(set().union(*(get_method(m).options for m in methods)))
    for name in spec.options:
        if name not in known:
            raise ConfigError(f"options.{name}: no method of this study reads it; "
                              f"{'known: ' + ', '.join(known) if known else 'its methods take no options'}")
    for method in methods:
        get_method(method).check(spec)
        _check_checkpoints(spec, method)
    for name in spec.space:
        reasons = [unread(spec, m, name) for m in methods]
        if all(reasons):
            why = reasons[0] if len(set(reasons)) == 1 else f"none of the methods {', '.join(methods)} reads it"
            raise ConfigError(f"space.{name}: {why}, so its values would repeat the same trial")
    return spec


def _check_checkpoints(spec: StudySpec, method: str) -> None:
    """A task that lists checkpoint files lists every one a plan of ``method`` starts from."""
    cfg = TrialConfig(task=spec.task, recipe=spec.finetune, method=method, members=spec.members,
                      options=tuple(sorted(spec.options.items())))
    starts = [job.checkpoint for job in get_method(method).plan(cfg) if job.checkpoint is not None]
    needed = max(starts, default=0) + 1
    # An empty list: the dataset pre-trains its own checkpoints, as many as a plan asks for.
    if spec.task.checkpoints and needed > len(spec.task.checkpoints):
        have = len(spec.task.checkpoints)
        raise ConfigError(f"task.checkpoints lists {have} file{'s' * (have != 1)}, and method {method} with "
                          f"members={spec.members} needs {needed}")


def load_checked(template: str, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """A template with ``--set`` overrides, validated and checked against the registries."""
    return check_spec(load_template(template, overrides))


def read_params(spec: StudySpec, method: str) -> frozenset[str]:
    """The search parameters a trial of ``method`` reads under ``spec``."""
    return frozenset(name for name in TRIAL_PARAMS if unread(spec, method, name) is None)


def unread(spec: StudySpec, method: str, name: str) -> str | None:
    """Why a trial of ``method`` ignores axis ``name`` under ``spec``; None when it reads it."""
    if name in SHARED_PARAMS:
        return None
    if name == "alpha" and spec.regularizer == "none":
        return "alpha weights a regularizer and the spec has none (set regularizer)"
    if spec.members == 1 and name in LATER_MEMBER_AXES:
        return "it acts on members 2..K and members is 1"
    return None if name in get_method(method).reads else f"method {method} never reads it"
