"""What a spec's values must be, checked without a registry: ranges, axes, cycles (names are checked
against their registries where a study is created, ``enstune.checks``)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import typing
from typing import Any

from enstune.errors import ConfigError
from enstune.recipe import POLICIES, PRECISIONS, Recipe
from enstune.spec import (
    MAX_BATCH, MAX_EPOCHS, MAX_EPOCH_MULT, MAX_GRID, MAX_HEARTBEAT, MAX_IMAGES, MAX_INTERP_POINTS, MAX_LR_MULT,
    MAX_MEMBERS, MAX_SEED, MAX_STEPS, MAX_TRIALS, Param, StudySpec, TRIAL_PARAMS, Task,
    _check_fields, _finite, _show, build, migrate)


def validate(spec: StudySpec) -> StudySpec:
    """Check every value of a spec that needs no registry against what a worker meets; return it unchanged."""
    _check_fields(spec)  # types first: a spec built by hand has never been through ``build``
    _validate_study(spec)
    _validate_task(spec.task)
    _validate_recipe(spec.finetune)
    _validate_space(spec)
    _validate_cycles(spec)
    return spec


# (field, low, high, shown bound, note): whole-number fields of the spec and their ranges.
STUDY_RANGES = (("members", 1, MAX_MEMBERS, MAX_MEMBERS, ""), ("n_trials", 1, MAX_TRIALS, "10**6", ""),
                ("seed", 0, MAX_SEED, "2**32-1", ""), ("prune_startup_trials", 0, MAX_TRIALS, "10**6", ""),
                ("interp_points", 2, MAX_INTERP_POINTS, MAX_INTERP_POINTS, ""),
                ("bn_images", 1, MAX_IMAGES, "10**7", ""), ("curve_images", 1, MAX_IMAGES, "10**7", ""),
                ("ood_images", 0, MAX_IMAGES, "10**7", " (0: whole sets)"),
                ("heartbeat", 1, MAX_HEARTBEAT, f"{MAX_HEARTBEAT} seconds", ""))


def _validate_study(spec: StudySpec) -> None:
    """The spec's own scalars: sizes, seeds, sampler, pruner, evaluators."""
    for name, low, high, shown, note in STUDY_RANGES:
        value = getattr(spec, name)
        if not low <= value <= high:
            raise ConfigError(f"{name} must be in {low}..{shown}{note}, got {_show(value)}")
    # sampler and pruner are names in enstune.pruning's registries, checked where a study is created
    if not spec.sampler or not spec.pruner:
        raise ConfigError(f"sampler and pruner must be names, got {spec.sampler!r}, {spec.pruner!r}")
    if len(set(spec.evaluate)) != len(spec.evaluate):
        raise ConfigError(f"evaluate lists an evaluator twice, got {list(spec.evaluate)}")
    if not spec.template:
        raise ConfigError("template must name a template, got ''")


def _validate_task(task: Task) -> None:
    """The task: split, evaluation crop, and the paths' placeholders (its options are its
    dataset's and model's, checked where a study is created)."""
    if not 0.0 < task.val_fraction < 1.0:
        raise ConfigError(f"task.val_fraction must be in (0, 1), got {task.val_fraction}")
    if not 0 <= task.split_seed <= MAX_SEED:
        raise ConfigError(f"task.split_seed must be in 0..2**32-1, got {_show(task.split_seed)}")
    if task.crop_pct is not None and not 0.0 < task.crop_pct <= 1.0:
        raise ConfigError(f"task.crop_pct must be in (0, 1] (or absent: the backbone's), got {task.crop_pct}")
    if not task.dataset or not task.model:
        raise ConfigError(f"task.dataset and task.model must be names, got {task.dataset!r}, {task.model!r}")
    for key, path in [("task.data_dir", task.data_dir)] + [
            (f"task.checkpoints[{i}]", c) for i, c in enumerate(task.checkpoints)]:
        _validate_path(key, path)


def _validate_path(key: str, path: str) -> None:
    """A path a worker expands with ``str.format(home=<a Path>)``: no other placeholder, not empty."""
    if not path.strip():
        raise ConfigError(f"{key} must be a path, got {path!r}")
    try:
        path.format(home=pathlib.Path("/"))
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        raise ConfigError(f"{key}: {{home}} is the only placeholder (write {{{{ and }}}} for a brace), "
                          f"got {path!r}") from None


# The ×1 recipe's fields and what each must satisfy: (test, rule). An axis named like a field obeys its rule.
RECIPE_RULES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"in 1..{MAX_EPOCHS}"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "batch_size": (lambda v: 2 <= v <= MAX_BATCH, "in 2..2**20 (BatchNorm cannot train on one example)"),
    "momentum": (lambda v: v >= 0, ">= 0"),
    "betas": (lambda v: all(0 <= b < 1 for b in v), "in [0, 1)"),
    "warmup_epochs": (lambda v: 0 <= v <= MAX_EPOCHS, f"in 0..{MAX_EPOCHS}"),
    "warmup_steps": (lambda v: 0 <= v <= MAX_STEPS, "in 0..10**9"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "augment": (lambda v: v in POLICIES, ", ".join(POLICIES[:-1]) + " or " + POLICIES[-1]),
    "randaugment_ops": (lambda v: 0 <= v <= 16, "in 0..16"),
    "randaugment_magnitude": (lambda v: 0 <= v <= 30, "in 0..30"),
    "precision": (lambda v: v in PRECISIONS, ", ".join(PRECISIONS[:-1]) + " or " + PRECISIONS[-1]),
    "color_brightness": (lambda v: 0 <= v[0] <= v[1], "[low, high] with 0 <= low <= high ([1, 1]: off)"),
    "color_contrast": (lambda v: 0 <= v[0] <= v[1], "[low, high] with 0 <= low <= high ([1, 1]: off)"),
    "color_saturation": (lambda v: 0 <= v[0] <= v[1], "[low, high] with 0 <= low <= high ([1, 1]: off)"),
    "color_hue": (lambda v: 0 <= v <= 0.5, "in [0, 0.5] (0: off)"),
    "optim": (lambda v: not v, "empty (an optimizer's own settings are set in [options])"),
}


def _validate_recipe(r: Recipe) -> None:
    """Each field of recipe ``r`` against its rule (types are checked by ``_check_fields``)."""
    for name, (ok, rule) in RECIPE_RULES.items():
        value = getattr(r, name)
        if not ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"finetune.{name} must be {rule}, got {_show(shown)}")


def _number(kind: type, v: Any) -> bool:
    """Whether ``v`` is a number of ``kind`` (int: a whole number; float: any finite int or float), not a bool."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) if kind is int else _finite(v)


def _axis_rule(name: str) -> tuple[type, Any, str]:
    """(kind, test, what it must be) for every value of search axis ``name``."""
    if name in RECIPE_RULES:  # the ×1 recipe's own field: its type and rule
        kind = typing.get_type_hints(Recipe)[name]
        ok, rule = RECIPE_RULES[name]
        return kind, ok, f"{'whole numbers' if kind is int else 'finite numbers'} {rule}"
    if name not in TRIAL_PARAMS:  # a plugin's option (checked against its declaration where a study is created)
        return object, lambda v: True, "numbers, strings or booleans"
    return {
        "lr_mult": (float, lambda v: 0 < v <= MAX_LR_MULT, f"numbers > 0 and <= {MAX_LR_MULT}"),
        "epoch_mult": (float, lambda v: 0 < v <= MAX_EPOCH_MULT,
                       f"numbers > 0 and <= {MAX_EPOCH_MULT} (a cycle of at most {MAX_EPOCH_MULT} × the ×1 epochs)"),
        "alpha": (float, lambda v: True, "finite numbers"),
        "freeze": (int, lambda v: v >= 0, "whole numbers of stages >= 0"),
        "scale": (float, lambda v: 0 <= v <= MAX_LR_MULT, f"numbers >= 0 and <= {MAX_LR_MULT}"),
        "seed": (int, lambda v: 0 <= v <= MAX_SEED, "whole numbers in 0..2**32-1"),
        "method": (str, bool, "method names"),
    }[name]


def _validate_space(spec: StudySpec) -> None:
    """Every search axis, and the size of a grid."""
    if "method" in spec.space and not spec.space["method"].choices:
        raise ConfigError("space.method needs a list of choices, e.g. [\"local_de\", \"starsse\"]")
    for name, p in spec.space.items():
        _validate_axis(name, p, spec.sampler)
    if spec.sampler == "grid" and (size := math.prod(len(p.choices) for p in spec.space.values())) > MAX_GRID:
        raise ConfigError(f"space: a grid of at most {MAX_GRID} points, got {size}")


def _validate_axis(name: str, p: Param, sampler: str) -> None:
    """One axis: choices or a range, and every value it can take against the rule of its parameter."""
    if name not in TRIAL_PARAMS and not name.isidentifier():
        raise ConfigError(f"unknown search parameter {name!r}; expected one of: {', '.join(TRIAL_PARAMS)} "
                          f"or an option of the study's plugins")
    kind, ok, wanted = _axis_rule(name)
    values = _axis_values(name, p, sampler, kind)
    shown = _show(list(values))
    if not all(_of_kind(kind, v) and ok(v) for v in values):
        raise ConfigError(f"space.{name} must be {wanted}, got {shown}")
    if len(set(values)) != len(values):  # 1 and 1.0 are the same choice too
        raise ConfigError(f"space.{name} lists a choice twice, got {shown}")


def _of_kind(kind: type, v: Any) -> bool:
    """Whether ``v`` is a value of ``kind`` (``object``: any TOML scalar, a plugin's setting checks it further)."""
    if kind is object:
        return isinstance(v, (str, bool)) or _number(float, v)
    return isinstance(v, str) if kind is str else _number(kind, v)


def _axis_values(name: str, p: Param, sampler: str, kind: type) -> tuple[Any, ...]:
    """The values that bound axis ``name``: its choices, or its low and high; the range's own rules checked."""
    if p.choices:
        if p.low is not None or p.high is not None:
            raise ConfigError(f"space.{name}: give either choices or low/high, not both")
        if p.log or p.step is not None:
            raise ConfigError(f"space.{name}: log and step shape a low/high range, not choices")
        return tuple(p.choices)
    if p.low is None or p.high is None or not p.low <= p.high:
        raise ConfigError(f"space.{name}: needs choices or low <= high, got {p}")
    if p.log and p.step is not None:
        raise ConfigError(f"space.{name}: a log range takes no step")
    if sampler == "grid":
        raise ConfigError(f"space.{name}: the grid sampler needs choices")
    if kind not in (float, object) and not all(isinstance(v, int) and not isinstance(v, bool)
                                     for v in (p.low, p.high, 1 if p.step is None else p.step)):
        # A range from TOML holds floats, and Optuna would sample floats from it.
        raise ConfigError(f"space.{name} takes a list of choices (a low/high range samples floats), got "
                          f"low={p.low}, high={p.high}")
    if p.step is not None and not p.step > 0:
        raise ConfigError(f"space.{name}.step must be > 0, got {p.step}")
    if p.log and not p.low > 0:
        raise ConfigError(f"space.{name}: a log range needs low > 0, got low={p.low}")
    return p.low, p.high


def _extremes(spec: StudySpec, name: str, default: float) -> tuple[float, ...]:
    """The smallest and largest value axis ``name`` takes (rules are monotone), else the ×1 value."""
    if name not in spec.space:
        return (default,)
    p = spec.space[name]
    values = p.choices or (p.low, p.high)
    return min(values), max(values)


def _validate_cycles(spec: StudySpec) -> None:
    """Every cycle recipe the space can give (×1 lr and epochs scaled by the multipliers) has a finite lr > 0
    and at most ``MAX_EPOCH_MULT`` × the ×1 epochs."""
    f = spec.finetune
    for lr, epochs, lr_mult, epoch_mult in itertools.product(
            _extremes(spec, "lr", f.lr), _extremes(spec, "epochs", f.epochs),
            _extremes(spec, "lr_mult", 1.0), _extremes(spec, "epoch_mult", 1.0)):
        cycle = dataclasses.replace(f, lr=lr, epochs=epochs).cycle(lr_mult, epoch_mult)
        if not (cycle.lr > 0 and _finite(cycle.lr)):
            raise ConfigError(f"space.lr_mult: a cycle's lr must be finite and > 0, got lr × lr_mult = "
                              f"{lr} × {lr_mult} = {cycle.lr}")
        if cycle.epochs > MAX_EPOCH_MULT * epochs:
            raise ConfigError(f"space.epoch_mult: a cycle trains at most {MAX_EPOCH_MULT} × the ×1 epochs, got "
                              f"{epochs} × {epoch_mult} = {cycle.epochs}")


def study_methods(spec: StudySpec) -> tuple[str, ...]:
    """The methods a study's trials run: its ``method`` axis, else its one ``method``."""
    return spec.space["method"].choices if "method" in spec.space else (spec.method,)


def spec_from_dict(data: dict[str, Any]) -> StudySpec:
    """Build and validate a StudySpec from a plain dict."""
    return validate(build(StudySpec, migrate(data)))
