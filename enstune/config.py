"""Frozen, typed configuration: templates (TOML), overrides, the spec stored with a study.

Plain data: names of datasets, methods, regularizers, optimizers and evaluators are checked
against their registries where a study is created (``enstune.checks``), not here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from enstune.errors import ConfigError
from enstune.recipe import Recipe


@dataclass(frozen=True)
class Task:
    """What is fine-tuned on what: dataset, network and its pre-trained checkpoints."""

    dataset: str = "demo"
    model: str = "demo_mlp"
    # Checkpoint files ("{home}" expands to the runs directory); empty: the dataset pre-trains its own.
    checkpoints: tuple[str, ...] = ()
    data_dir: str = "{home}/data"
    val_fraction: float = 0.1
    split_seed: int = 0
    partition: int = 1  # SUN-397's train/test partition (1..10; the paper uses the first)
    workers: int = 8  # DataLoader workers of streamed (folder) datasets
    checkpoint_prefix: str = ""  # a key prefix to strip from the checkpoints' state dicts
    head: str = "new"  # "new": a random head; "zeroshot": CLIP's zero-shot classifier from the class names


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a list of choices or a numeric range."""

    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None


MAX_MEMBERS = 100  # an ensemble's size; beyond it a typo, not a study
# Names a search space may use: the cycle parameters and the ×1 recipe's grid.
TRIAL_PARAMS = ("method", "lr_mult", "epoch_mult", "alpha", "freeze", "seed", "epochs", "lr", "weight_decay")
# Those every method reads: they pick the method, the ×1 recipe and the seeds.
SHARED_PARAMS = frozenset({"method", "seed", "epochs", "lr", "weight_decay"})
# Those that reach members 2..K only.
LATER_MEMBER_AXES = frozenset({"lr_mult", "epoch_mult", "alpha", "freeze"})


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to run a study; stored in the study's user attrs."""

    template: str
    description: str = ""
    task: Task = field(default_factory=Task)
    finetune: Recipe = field(default_factory=Recipe)  # the ×1 recipe
    method: str = "starsse"
    members: int = 5
    n_trials: int = 16
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "median"
    # Completed trials of the same method before the pruner judges anyone.
    prune_startup_trials: int = 4
    # An extra loss term for members 2..K (enstune.regularizers), weighted by the trial's alpha,
    # comparing the output of module ``tap`` ("": the head's input); RTD looks at ``subsample`` rows.
    regularizer: str = "none"
    tap: str = ""
    subsample: int = 64
    space: dict[str, Param] = field(default_factory=dict)
    # Evaluators run on every completed trial (see enstune.evaluation.evaluators).
    evaluate: tuple[str, ...] = ("calibration", "diversity", "soups", "connectivity", "ood")
    interp_points: int = 11  # points on each interpolation segment, end points included
    # The evaluators' cost: every point in weight space (soups, segments, joint connectivity)
    # recalibrates BN on ``bn_images`` training images and is tested on ``curve_images`` validation
    # images; each OOD test set is cut to ``ood_images`` (0: whole), run through every member and soup.
    bn_images: int = 1024
    curve_images: int = 1024
    ood_images: int = 0


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space, resolved against the spec."""

    task: Task
    recipe: Recipe
    method: str
    members: int
    lr_mult: float = 1.0
    epoch_mult: float = 1.0
    alpha: float = 0.0
    freeze: int = 0  # leading stages members 2..K keep frozen
    seed: int = 0
    regularizer: str = "none"
    tap: str = ""
    subsample: int = 64


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(t: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``t`` and convert TOML values to it."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)) or (Ellipsis not in args and len(value) != len(args)):
            raise ConfigError(f"{key} must be a list{'' if Ellipsis in args else f' of {len(args)}'}, got {value!r}")
        kinds = [args[0]] * len(value) if Ellipsis in args else list(args)
        return tuple(_coerce(k, v, f"{key}[{i}]") for i, (k, v) in enumerate(zip(kinds, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        _, vt = typing.get_args(t)
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(t):
        if isinstance(value, t):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return build(t, value, prefix=f"{key}.")
    if t is Any:
        return value
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_type_name(t)}, got {value!r}")
    if t is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key {prefix}{key!s}; expected one of: {', '.join(names)}")
    return cls(**{k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()})


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values in TOML syntax) to a raw spec dict."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def validate(spec: StudySpec) -> StudySpec:
    """Check the cross-field constraints of a spec that need no registry; return it unchanged."""
    if not 1 <= spec.members <= MAX_MEMBERS:
        raise ConfigError(f"members must be in 1..{MAX_MEMBERS}, got {spec.members}")
    if spec.n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {spec.n_trials}")
    if not 0 <= spec.seed < 2**32 or spec.prune_startup_trials < 0:
        raise ConfigError(f"seed must be in 0..2**32-1 and prune_startup_trials >= 0, got {spec.seed}, "
                          f"{spec.prune_startup_trials}")
    _validate_task(spec.task)
    _validate_recipe(spec.finetune)
    if spec.sampler not in ("tpe", "random", "grid"):
        raise ConfigError(f"sampler must be tpe, random or grid, got {spec.sampler!r}")
    if spec.pruner not in ("median", "none"):
        raise ConfigError(f"pruner must be median or none, got {spec.pruner!r}")
    if spec.interp_points < 2:
        raise ConfigError(f"interp_points must be >= 2, got {spec.interp_points}")
    if spec.bn_images < 1 or spec.curve_images < 1 or spec.ood_images < 0:
        raise ConfigError(f"bn_images and curve_images must be >= 1 and ood_images >= 0 (0: whole sets), got "
                          f"{spec.bn_images}, {spec.curve_images}, {spec.ood_images}")
    if spec.subsample < 4:
        raise ConfigError(f"subsample must be >= 4, got {spec.subsample}")
    if "method" in spec.space and not spec.space["method"].choices:
        raise ConfigError("space.method needs a list of choices, e.g. [\"local_de\", \"starsse\"]")
    for name, p in spec.space.items():
        _validate_axis(name, p, spec.sampler)
    return spec


def _validate_task(task: Task) -> None:
    if not 0.0 < task.val_fraction < 1.0:
        raise ConfigError(f"task.val_fraction must be in (0, 1), got {task.val_fraction}")
    if not 1 <= task.partition <= 10 or task.workers < 0:
        raise ConfigError(f"task.partition must be in 1..10 and task.workers >= 0, got {task.partition}, "
                          f"{task.workers}")
    if task.head not in ("new", "zeroshot"):
        raise ConfigError(f"task.head must be new or zeroshot, got {task.head!r}")


def _validate_recipe(r: Recipe) -> None:
    rules = [(r.epochs >= 1, "epochs >= 1", r.epochs), (r.lr > 0, "lr > 0", r.lr),
             (r.batch_size >= 1, "batch_size >= 1", r.batch_size),
             (r.weight_decay >= 0, "weight_decay >= 0", r.weight_decay), (r.momentum >= 0, "momentum >= 0", r.momentum),
             (all(0 <= b < 1 for b in r.betas), "betas in [0, 1)", list(r.betas)),
             (r.warmup_epochs >= 0, "warmup_epochs >= 0", r.warmup_epochs),
             (r.warmup_steps >= 0, "warmup_steps >= 0", r.warmup_steps),
             (0 <= r.label_smoothing < 1, "0 <= label_smoothing < 1", r.label_smoothing),
             (r.grad_clip >= 0, "grad_clip >= 0 (0: no clipping)", r.grad_clip),
             (r.augment in ("default", "randaugment", "none"), "augment default, randaugment or none", r.augment),
             (0 <= r.randaugment_ops <= 16, "randaugment_ops in 0..16", r.randaugment_ops),
             (0 <= r.randaugment_magnitude <= 30, "randaugment_magnitude in 0..30", r.randaugment_magnitude)]
    for ok, rule, value in rules:
        if not ok:
            raise ConfigError(f"finetune needs {rule}, got {value!r}")


def _validate_axis(name: str, p: Param, sampler: str) -> None:
    if name not in TRIAL_PARAMS:
        raise ConfigError(f"unknown search parameter {name!r}; expected one of: {', '.join(TRIAL_PARAMS)}")
    if p.choices:
        if p.low is not None or p.high is not None:
            raise ConfigError(f"space.{name}: give either choices or low/high, not both")
        values = p.choices
    elif p.low is None or p.high is None or p.low > p.high:
        raise ConfigError(f"space.{name}: needs choices or low <= high, got {p}")
    else:
        values = (p.low, p.high)
    if p.log and p.step is not None:
        raise ConfigError(f"space.{name}: a log range takes no step")
    if sampler == "grid" and not p.choices:
        raise ConfigError(f"space.{name}: the grid sampler needs choices")
    if name == "seed" and any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32 for v in values):
        raise ConfigError(f"space.seed must be whole numbers in 0..2**32-1, got {list(values)}")
    if name == "freeze" and any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ConfigError(f"space.freeze must be whole numbers of stages >= 0, got {list(values)}")
    if name in ("lr_mult", "epoch_mult", "lr", "epochs") and any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values
    ):
        raise ConfigError(f"space.{name} must be numbers > 0, got {list(values)}")


def study_methods(spec: StudySpec) -> tuple[str, ...]:
    """The methods a study's trials run: its ``method`` axis, else its one ``method``."""
    return spec.space["method"].choices if "method" in spec.space else (spec.method,)


def spec_from_dict(data: dict[str, Any]) -> StudySpec:
    """Build and validate a StudySpec from a plain dict."""
    return validate(build(StudySpec, data))


def list_templates() -> list[str]:
    """Names of the study templates shipped in ``studies/``."""
    root = importlib.resources.files("enstune.studies")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_template(name: str, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read template ``name``, apply ``--set`` overrides and validate the result."""
    data = apply_overrides(_template_data(name), list(overrides))
    if data.get("template", name) != name:
        raise ConfigError(f"template is the name of the template ({name!r}); --set cannot change it")
    data["template"] = name
    return spec_from_dict(data)


def _template_data(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A template's raw dict, merged over the template named by its ``base`` key."""
    if name not in list_templates():
        raise ConfigError(f"unknown template {name!r}; known: {', '.join(list_templates())}")
    if name in seen:
        raise ConfigError(f"template {name!r} is its own base")
    text = importlib.resources.files("enstune.studies").joinpath(f"{name}.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML in template {name!r}: {exc}") from None
    base = data.pop("base", None)
    return _merge(_template_data(base, (*seen, name)), data) if base else data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = _deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "space":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deepcopy(value)
    return merged
