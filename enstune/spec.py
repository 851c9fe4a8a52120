"""The typed spec: frozen dataclasses of a study (Task, Param, StudySpec, TrialConfig), their limits, and
plain dicts built into them and back (types checked, ranges not: ``enstune.spec_rules``)."""

from __future__ import annotations

import dataclasses
import math
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
    checkpoint_prefix: str = ""  # a key prefix to strip from the checkpoints' state dicts
    # Evaluation: resize to size / crop_pct, then centre-crop (None: the backbone's own, e.g. 0.9 for Swin-T's tag).
    crop_pct: float | None = None
    # The dataset's and the model family's own settings (SUN-397's partition, a streamed dataset's loader workers,
    # CLIP's head, timm's drop_path_rate, …): each declares
    # the names it reads and their defaults (``enstune.settings``); a name left out has its default.
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any) -> Any:
        """The task's setting ``name``, else ``default``."""
        return self.options.get(name, default)


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a list of choices or a numeric range."""

    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None


MAX_MEMBERS = 100  # an ensemble's size; beyond it a typo, not a study
# Bounds beyond which a value is a typo, not a study; each also keeps a worker's arithmetic finite.
MAX_TRIALS = 10**6  # n_trials and prune_startup_trials
MAX_GRID = 10_000  # a grid's points: create enumerates every one of them
MAX_SEED = 2**32 - 1  # Optuna's samplers and numpy take 32-bit seeds
MAX_EPOCHS = 10_000  # the ×1 recipe's epochs (and warm-up epochs)
MAX_STEPS = 10**9  # warm-up steps
MAX_EPOCH_MULT = 100  # a cycle trains at most 100 × the ×1 epochs
MAX_LR_MULT = 1000  # a cycle's lr at most 1000 × the ×1 lr
MAX_BATCH = 2**20  # batch_size
MAX_INTERP_POINTS = 1000  # each point is a model with recalibrated BN
MAX_IMAGES = 10**7  # bn_images, curve_images, ood_images
MAX_HEARTBEAT = 86_400  # a day
# Names a search space may use: the cycle parameters and the ×1 recipe's grid.
TRIAL_PARAMS = ("method", "lr_mult", "epoch_mult", "alpha", "freeze", "scale", "seed", "epochs", "lr", "weight_decay")
# Those every method reads: they pick the method, the ×1 recipe and the seeds.
SHARED_PARAMS = frozenset({"method", "seed", "epochs", "lr", "weight_decay"})
# Those that reach members 2..K only.
LATER_MEMBER_AXES = frozenset({"lr_mult", "epoch_mult", "alpha", "freeze", "scale"})


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
    pruner: str = "bound"
    # Completed trials of the same method before the pruner judges anyone.
    prune_startup_trials: int = 4
    # An extra loss term for members 2..K (enstune.regularizers), weighted by the trial's alpha,
    # comparing the output of module ``tap`` ("": the head's input).
    regularizer: str = "none"
    tap: str = ""
    space: dict[str, Param] = field(default_factory=dict)
    # Settings of the study's methods, regularizer and optimizer beyond the search axes (distillation's beta
    # and tau, RTD's subsample, …); each declares the names it reads and their defaults (``enstune.settings``).
    options: dict[str, Any] = field(default_factory=dict)
    # Evaluators run on every completed trial (see enstune.evaluation.evaluators).
    evaluate: tuple[str, ...] = ("calibration", "diversity", "soups", "connectivity", "ood")
    interp_points: int = 11  # points on each interpolation segment, end points included
    # The evaluators' cost: every point in weight space (soups, segments, joint connectivity)
    # recalibrates BN on ``bn_images`` training images (the whole set, once, when it is smaller) and is
    # tested on ``curve_images`` validation images; each OOD test set is cut to ``ood_images`` (0: whole), run through every member and soup.
    bn_images: int = 1024
    curve_images: int = 1024
    ood_images: int = 0
    # Seconds between a running trial's heartbeats on a database storage; a trial silent for two
    # intervals is failed and re-queued. A property of the study, so that every worker judges
    # staleness alike; a worker's --heartbeat may only lengthen it.
    heartbeat: int = 60
    # Where the spec came from beyond its template: the study file and the --set overrides ("": the template as is).
    source: str = ""


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
    scale: float = 1.0  # the spread of members sampled around a trained one (SWAG, Laplace)
    seed: int = 0
    regularizer: str = "none"
    tap: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # the spec's options and the trial's option axes, sorted by name

    def option(self, name: str, default: Any) -> Any:
        """The trial's option ``name``, else ``default``."""
        return dict(self.options).get(name, default)


# Where settings that plugins now declare once lived on shared types, and the value each then had by default:
# a stored spec or a study file that gives one is read with it moved into the ``options`` of its owner.
MOVED_TO_OPTIONS = {("task", "partition"): 1, ("task", "decode"): "auto", ("task", "head"): "new", ("", "subsample"): 64,
                    ("task", "workers"): 8, ("task", "drop_path_rate"): None}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A spec dict with settings of earlier versions moved to today's places (one at its old default dropped).

    Each layer of a spec (a base template, the file over it, the ``--set`` overrides) is migrated before the next
    is laid on, so a setting given at its old place belongs to the latest layer and wins over ``options``.
    """
    data = dict(data)
    for (table, name), default in MOVED_TO_OPTIONS.items():
        if table and isinstance(data.get(table), dict) and name in data[table]:
            data[table] = node = dict(data[table])
        elif not table and name in data:
            node = data
        else:
            continue
        value, options = node.pop(name), node.get("options", {})
        if isinstance(options, dict) and value is not None and (value != default or name in options):
            node["options"] = {**options, name: value}  # a table given wrong is refused by ``build``
    return data


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _show(value: Any) -> str:
    """``repr(value)``, cut short: an error stays one readable line even for a 400-digit number."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}…{text[-10:]}"


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
            size = "" if Ellipsis in args else f" of {len(args)}"
            raise ConfigError(f"{key} must be a list{size}, got {_show(value)}")
        kinds = [args[0]] * len(value) if Ellipsis in args else list(args)
        return tuple(_coerce(k, v, f"{key}[{i}]") for i, (k, v) in enumerate(zip(kinds, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {_show(value)}")
        _, vt = typing.get_args(t)
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(t):
        if isinstance(value, t):
            _check_fields(value, f"{key}.")  # built by hand, not from TOML: its fields are unchecked
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {_show(value)}")
        return build(t, value, prefix=f"{key}.")
    if t is Any:
        return value
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        if not _finite(value):  # float() of a huge int overflows
            raise ConfigError(f"{key} must be finite, got {_show(value)}")
        return float(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_type_name(t)}, got {_show(value)}")
    if t is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return value


def _check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass instance ``obj`` against its annotation, as ``build`` does."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _coerce(hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}")


def _finite(value: Any) -> bool:
    """Whether the number ``value`` is finite as a float (an int too large for one is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
