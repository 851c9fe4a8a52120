"""What a study is checked against where it is created: the registries' names and the axes its methods read."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from enstune.config import (LATER_MEMBER_AXES, SHARED_PARAMS, TRIAL_PARAMS, StudySpec, TrialConfig, load_template,
                            study_methods)
from enstune.data import dataset_settings, list_datasets, reads_files
from enstune.errors import ConfigError
from enstune.evaluation.evaluators import EVALUATORS
from enstune.methods import MemberJob, get_method
from enstune.models import model_settings
from enstune.optim import OPTIMIZERS, check_optimizer, with_options
from enstune.pruning import PRUNERS, SAMPLERS
from enstune.regularizers import get_regularizer
from enstune.schedules import SCHEDULES
from enstune.settings import Setting, check_options


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
    if spec.finetune.auto_augment:
        check_auto_augment(spec.finetune.augment, spec.finetune.auto_augment)
    methods = study_methods(spec)
    declared = study_settings(spec)
    check_options(spec.options, declared, "options.", "the study's methods, regularizer and optimizer")
    if spec.task.options:  # a network's family is looked up only then: naming a timm network imports timm
        check_options(spec.task.options, task_settings(spec), "task.options.",
                      f"the dataset {spec.task.dataset} and the model {spec.task.model}")
    check_optimizer(with_options(spec.finetune, spec.options))
    for method in methods:
        get_method(method).check(spec)
        _check_checkpoints(spec, method)
    _check_option_axes(spec, methods, declared)
    for name in spec.space:
        reasons = [unread(spec, m, name) for m in methods]
        if all(reasons):
            why = reasons[0] if len(set(reasons)) == 1 else f"none of the methods {', '.join(methods)} reads it"
            raise ConfigError(f"space.{name}: {why}, so its values would repeat the same trial")
    return spec


def study_settings(spec: StudySpec) -> dict[str, Setting]:
    """What the study's methods, regularizer and optimizer read from ``options``, by name."""
    owners = [(f"method {m}", get_method(m).options) for m in study_methods(spec)]
    if spec.regularizer != "none":
        owners.append((f"regularizer {spec.regularizer}", get_regularizer(spec.regularizer).settings))
    owners.append((f"optimizer {spec.finetune.optimizer}", OPTIMIZERS.get(spec.finetune.optimizer).settings))
    declared: dict[str, Setting] = {}
    where: dict[str, str] = {}
    for owner, settings in owners:
        for name, setting in settings.items():
            if declared.setdefault(name, setting) != setting:  # one option, one meaning within a study
                raise ConfigError(f"options.{name} means two things here: {where[name]} and {owner} both declare it")
            where.setdefault(name, owner)
    return declared


def task_settings(spec: StudySpec) -> dict[str, Setting]:
    """What the task's dataset and model family read from ``task.options``, by name."""
    return dataset_settings(spec.task.dataset) | model_settings(spec.task.model)


def _check_option_axes(spec: StudySpec, methods: list[str], declared: dict[str, Setting]) -> None:
    """A search axis that is no trial parameter is an option of the study's plugins (the axis sets it, over
    ``options``); each of its values one its plugin takes."""
    for name, p in spec.space.items():
        if name in TRIAL_PARAMS:
            continue
        if name not in declared:
            if name in task_settings(spec):
                raise ConfigError(f"space.{name}: a setting of the task is one per study (a worker holds one task's "
                                  f"data and network); set task.options.{name}, or create a study per value")
            known = ", ".join(sorted(declared))
            raise ConfigError(f"unknown search parameter {name!r}; expected one of: {', '.join(TRIAL_PARAMS)}"
                              + (f" or an option of this study's plugins: {known}" if known else ""))
        for value in p.choices or (p.low, p.high):
            declared[name].check(f"space.{name}", value)
        for method in (m for m in methods if name in get_method(m).options):
            for value in p.choices or (p.low, p.high):
                try:  # a method checks its options as it plans
                    _plan(spec, method, {name: value})
                except ConfigError as exc:
                    raise ConfigError(f"space.{name} = {value}: {exc}") from None


def check_auto_augment(policy: str, config: str) -> None:
    """timm's auto-augment ``config`` is one timm builds, on a policy that augments and has no RandAugment of its own."""
    from enstune.data.augment import timm_augment

    if policy != "default":
        raise ConfigError(f"finetune.auto_augment takes augment = \"default\" (the crop and flip it follows), got "
                          f"augment = {policy!r}: {'one RandAugment, not two' if policy == 'randaugment' else 'none'}")
    timm_augment(config, 224, (0.485, 0.456, 0.406), "bicubic")


def _plan(spec: StudySpec, method: str, options: dict[str, float] | None = None) -> list[MemberJob]:
    """The plan of ``method`` on the spec's ×1 recipe, with ``options`` over the spec's own."""
    cfg = TrialConfig(task=spec.task, recipe=spec.finetune, method=method, members=spec.members,
                      options=tuple(sorted((spec.options | (options or {})).items())))
    return get_method(method).plan(cfg)


def _check_checkpoints(spec: StudySpec, method: str) -> None:
    """A task that lists checkpoint files lists every one a plan of ``method`` starts from."""
    starts = [job.checkpoint for job in _plan(spec, method) if job.checkpoint is not None]
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
    """The search parameters a trial of ``method`` reads under ``spec``: trial parameters and its plugins' options."""
    names = (*TRIAL_PARAMS, *study_settings(spec))
    return frozenset(name for name in names if unread(spec, method, name) is None)


def unread(spec: StudySpec, method: str, name: str) -> str | None:
    """Why a trial of ``method`` ignores axis ``name`` under ``spec``; None when it reads it."""
    if name in SHARED_PARAMS:
        return None
    if name == "alpha" and spec.regularizer == "none":
        return "alpha weights a regularizer and the spec has none (set regularizer)"
    if spec.members == 1 and name in LATER_MEMBER_AXES:
        return "it acts on members 2..K and members is 1"
    method_ = get_method(method)
    if name in method_.reads or name in method_.options:
        return None
    if spec.regularizer != "none" and name in get_regularizer(spec.regularizer).settings:
        if spec.members == 1:
            return "it acts on members 2..K and members is 1"
        return None if "alpha" in method_.reads else f"method {method} trains no member {spec.regularizer} acts on"
    if name in OPTIMIZERS.get(spec.finetune.optimizer).settings:
        return None
    return f"method {method} never reads it"


def check_new(spec: StudySpec, home: Path) -> list[str]:
    """What a study is checked for when it is created, beyond what its workers check on load.

    A warm-up longer than the training it warms up is refused; the paths it reads that are not
    found here come back as one-line warnings (a cluster's paths may be mounted only where its
    workers run, so they are not refused).
    """
    check_warmup(spec)
    return missing_paths(spec, home)


def check_warmup(spec: StudySpec) -> None:
    """Refuse a warm-up in epochs longer than the ×1 training, or, warming up every cycle, than the shortest cycle."""
    f = spec.finetune
    if f.warmup_steps > 0 or f.warmup_epochs == 0:  # steps: their length in epochs depends on the data's size
        return
    epochs = _axis(spec, "epochs", f.epochs)
    shortest = min(epochs)
    if f.warmup_epochs > shortest:
        raise ConfigError(f"finetune.warmup_epochs is {f.warmup_epochs:g}, longer than the {shortest:g} epochs it "
                          f"warms up: at most finetune.epochs")
    if not f.cycle_warmup or spec.members == 1:
        return
    mults = _axis(spec, "epoch_mult", 1.0)
    for e, m in itertools.product(epochs, mults):
        if f.warmup_epochs > (cycle := max(1, math.floor(e * m))):
            raise ConfigError(f"finetune.warmup_epochs is {f.warmup_epochs:g} and cycle_warmup warms up every cycle, "
                              f"but a cycle of {e:g} x {m:g} trains {cycle} epoch(s)")


def _axis(spec: StudySpec, name: str, default: float) -> tuple[float, ...]:
    """The values axis ``name`` takes (a range: its low end, the shortest training), else ``default``."""
    if name not in spec.space:
        return (default,)
    p = spec.space[name]
    return tuple(p.choices) or (p.low,)


def missing_paths(spec: StudySpec, home: Path) -> list[str]:
    """One line for the data directory and one for the checkpoint files of ``spec`` that do not exist under ``home``."""
    task, out = spec.task, []
    if reads_files(task.dataset) and not Path(task.data_dir.format(home=home)).exists():
        out.append(f"task.data_dir {task.data_dir.format(home=home)} does not exist here; workers must find "
                   f"{task.dataset} there")
    missing = [c.format(home=home) for c in task.checkpoints if not Path(c.format(home=home)).is_file()]
    if missing:
        n = len(task.checkpoints)
        out.append(f"task.checkpoints: {len(missing)} of {n} file{'s' * (n != 1)} not found here, e.g. {missing[0]}; "
                   f"workers must find them")
    return out
