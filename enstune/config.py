"""Frozen, typed configuration: templates (TOML), overrides, the spec stored with a study."""

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


@dataclass(frozen=True)
class Finetune:
    """The ×1 recipe: how a single model is fine-tuned from a pre-trained checkpoint."""

    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 256
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0


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
    finetune: Finetune = field(default_factory=Finetune)
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


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space, resolved against the spec."""

    task: Task
    recipe: Finetune
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
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value)
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
    """Check the cross-field constraints of a spec; return it unchanged."""
    from enstune.data import list_datasets
    from enstune.methods import get_method

    if not 1 <= spec.members <= MAX_MEMBERS:
        raise ConfigError(f"members must be in 1..{MAX_MEMBERS}, got {spec.members}")
    if spec.n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {spec.n_trials}")
    if not 0 <= spec.seed < 2**32 or spec.prune_startup_trials < 0:
        raise ConfigError(f"seed must be in 0..2**32-1 and prune_startup_trials >= 0, got {spec.seed}, "
                          f"{spec.prune_startup_trials}")
    if spec.task.dataset not in list_datasets():
        raise ConfigError(f"unknown dataset {spec.task.dataset!r}; known: {', '.join(list_datasets())}")
    if not 0.0 < spec.task.val_fraction < 1.0:
        raise ConfigError(f"task.val_fraction must be in (0, 1), got {spec.task.val_fraction}")
    ft = spec.finetune
    if ft.epochs < 1 or ft.lr <= 0 or ft.batch_size < 1 or ft.weight_decay < 0:
        raise ConfigError(f"finetune needs epochs >= 1, lr > 0, batch_size >= 1, weight_decay >= 0, got {ft}")
    if ft.momentum < 0 or ft.warmup_epochs < 0 or not 0 <= ft.label_smoothing < 1:
        raise ConfigError(f"finetune needs momentum >= 0, warmup_epochs >= 0, 0 <= label_smoothing < 1, got {ft}")
    if spec.sampler not in ("tpe", "random", "grid"):
        raise ConfigError(f"sampler must be tpe, random or grid, got {spec.sampler!r}")
    if spec.pruner not in ("median", "none"):
        raise ConfigError(f"pruner must be median or none, got {spec.pruner!r}")
    from enstune.evaluation.evaluators import list_evaluators

    unknown = [e for e in spec.evaluate if e not in list_evaluators()]
    if unknown:
        raise ConfigError(f"unknown evaluator {unknown[0]!r}; known: {', '.join(list_evaluators())}")
    if spec.interp_points < 2:
        raise ConfigError(f"interp_points must be >= 2, got {spec.interp_points}")
    if spec.regularizer != "none":
        from enstune.regularizers import get_regularizer

        get_regularizer(spec.regularizer)  # raises with the known names
    if spec.subsample < 4:
        raise ConfigError(f"subsample must be >= 4, got {spec.subsample}")
    methods = spec.space["method"].choices if "method" in spec.space else (spec.method,)
    if not methods:
        raise ConfigError("space.method needs a list of choices, e.g. [\"local_de\", \"starsse\"]")
    read = set().union(*(read_params(spec, m) for m in methods))  # raises for an unknown method
    for name, p in spec.space.items():
        if name not in TRIAL_PARAMS:
            raise ConfigError(f"unknown search parameter {name!r}; expected one of: {', '.join(TRIAL_PARAMS)}")
        if name not in read:
            why = _why_unread(name, spec, methods)
            raise ConfigError(f"space.{name}: {why}, so its values would repeat the same trial")
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
        if spec.sampler == "grid" and not p.choices:
            raise ConfigError(f"space.{name}: the grid sampler needs choices")
        if name == "seed" and any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32 for v in values):
            raise ConfigError(f"space.seed must be whole numbers in 0..2**32-1, got {list(values)}")
        if name == "freeze" and any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ConfigError(f"space.freeze must be whole numbers of stages >= 0, got {list(values)}")
        if name in ("lr_mult", "epoch_mult", "lr", "epochs") and any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values
        ):
            raise ConfigError(f"space.{name} must be numbers > 0, got {list(values)}")
    return spec


def read_params(spec: StudySpec, method: str) -> frozenset[str]:
    """The search parameters a trial of ``method`` reads under ``spec``."""
    from enstune.methods import get_method

    read = SHARED_PARAMS | get_method(method).reads
    if spec.members == 1:
        read -= LATER_MEMBER_AXES
    if spec.regularizer == "none":
        read -= {"alpha"}
    return read


def _why_unread(name: str, spec: StudySpec, methods: tuple[str, ...]) -> str:
    if name == "alpha" and spec.regularizer == "none":
        return "alpha weights a regularizer and the spec has none (set regularizer)"
    if spec.members == 1 and name in LATER_MEMBER_AXES:
        return "it acts on members 2..K and members is 1"
    return f"method {', '.join(methods)} never reads it" if len(methods) == 1 else \
        f"none of the methods {', '.join(methods)} reads it"


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
