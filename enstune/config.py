"""Frozen, typed configuration: templates (TOML), overrides, the spec stored with a study.

Plain data: names of datasets, methods, regularizers, optimizers and evaluators are checked
against their registries where a study is created (``enstune.checks``), not here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
import pathlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from enstune.errors import ConfigError
from enstune.recipe import POLICIES, PRECISIONS, Recipe


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
    # Where folder datasets decode JPEGs: "workers" (PIL), "device" (torchvision's decode_jpeg there), "auto" (device on CUDA)
    decode: str = "auto"
    checkpoint_prefix: str = ""  # a key prefix to strip from the checkpoints' state dicts
    head: str = "new"  # "new": a random head; "zeroshot": CLIP's zero-shot classifier from the class names
    # timm's stochastic depth while training (None: the network's own default, 0.1 for timm's Swin, 0 for ResNets).
    drop_path_rate: float | None = None
    # Evaluation: resize to size / crop_pct, then centre-crop (None: the backbone's own, e.g. 0.9 for Swin-T's tag).
    crop_pct: float | None = None


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
MAX_BATCH = 2**20  # batch_size and RTD's subsample
MAX_WORKERS = 256  # DataLoader processes
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
    # comparing the output of module ``tap`` ("": the head's input); RTD looks at ``subsample`` rows.
    regularizer: str = "none"
    tap: str = ""
    subsample: int = 64
    space: dict[str, Param] = field(default_factory=dict)
    # Settings of the study's methods beyond the search axes (e.g. distillation's beta and tau); each
    # method declares the names it reads and their defaults (``Method.options``).
    options: dict[str, float] = field(default_factory=dict)
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
    subsample: int = 64
    options: tuple[tuple[str, float], ...] = ()  # the spec's method options, sorted by name

    def option(self, name: str, default: float) -> float:
        """The spec's method option ``name``, else ``default``."""
        return dict(self.options).get(name, default)


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


def _parse_value(text: str, key: str = "value") -> Any:
    """The TOML value ``text``; a bare word is a string, a broken list, table or string an error."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as exc:
        if text[:1] in ("[", "{", '"', "'"):  # meant as TOML: a silent string would hide the typo
            raise ConfigError(f"--set {key}: malformed TOML value {_show(text)} ({exc})") from None
        return text
    if list(parsed) != ["v"]:  # a newline in the value would set other keys of the document
        raise ConfigError(f"--set {key}: one TOML value expected, got {_show(text)}")
    return parsed["v"]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values in TOML syntax) to a raw spec dict."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {_show(item)}")
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {key.strip()}: a dotted key has an empty part")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part.strip(), {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
        node[parts[-1].strip()] = _parse_value(text.strip(), key.strip())
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


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
                ("ood_images", 0, MAX_IMAGES, "10**7", " (0: whole sets)"), ("subsample", 4, MAX_BATCH, "2**20", ""),
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
    """The task: split, partition, loader workers, head, and the paths' placeholders."""
    if not 0.0 < task.val_fraction < 1.0:
        raise ConfigError(f"task.val_fraction must be in (0, 1), got {task.val_fraction}")
    if not 0 <= task.split_seed <= MAX_SEED:
        raise ConfigError(f"task.split_seed must be in 0..2**32-1, got {_show(task.split_seed)}")
    if not 1 <= task.partition <= 10:
        raise ConfigError(f"task.partition must be in 1..10, got {_show(task.partition)}")
    if not 0 <= task.workers <= MAX_WORKERS:
        raise ConfigError(f"task.workers must be in 0..{MAX_WORKERS}, got {_show(task.workers)}")
    if task.decode not in ("workers", "device", "auto"):
        raise ConfigError(f"task.decode must be workers, device or auto, got {task.decode!r}")
    if task.head not in ("new", "zeroshot"):
        raise ConfigError(f"task.head must be new or zeroshot, got {task.head!r}")
    if task.drop_path_rate is not None and not 0.0 <= task.drop_path_rate < 1.0:
        raise ConfigError(f"task.drop_path_rate must be in [0, 1) (or absent: the network's default), "
                          f"got {task.drop_path_rate}")
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
    if name not in TRIAL_PARAMS:  # a method's option (checked against the methods where a study is created)
        return float, lambda v: True, "finite numbers"
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
                          f"or a method's option")
    kind, ok, wanted = _axis_rule(name)
    values = _axis_values(name, p, sampler, kind)
    shown = _show(list(values))
    if not all((isinstance(v, str) if kind is str else _number(kind, v)) and ok(v) for v in values):
        raise ConfigError(f"space.{name} must be {wanted}, got {shown}")
    if len(set(values)) != len(values):  # 1 and 1.0 are the same choice too
        raise ConfigError(f"space.{name} lists a choice twice, got {shown}")


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
    if kind is not float and not all(isinstance(v, int) and not isinstance(v, bool)
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
    return validate(build(StudySpec, data))


def list_templates() -> list[str]:
    """Names of the study templates shipped in ``studies/``."""
    root = importlib.resources.files("enstune.studies")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def is_study_file(name: str) -> bool:
    """Whether ``name`` is a study file's path rather than a template's name (templates hold no ``/`` nor ``.toml``)."""
    return name.endswith(".toml") or "/" in name or "\\" in name


def load_template(name: str, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read template ``name`` (or the study file at that path), apply ``--set`` overrides and validate the result."""
    data, template = resolved_data(name)
    data = apply_overrides(data, list(overrides))
    if data.get("template", template) != template:
        raise ConfigError(f"template is the name of the template ({template!r}); --set cannot change it")
    data["template"] = template
    notes = ([f"file {pathlib.Path(name).name}"] if is_study_file(name) else []) + [f"--set {o}" for o in overrides]
    if notes:  # a spec that is no template as shipped says what made it
        data["source"] = "; ".join(notes)
    return spec_from_dict(data)


def resolved_data(name: str) -> tuple[dict[str, Any], str]:
    """(raw dict, template name) of template ``name`` or of the study file at path ``name``, its base merged."""
    if not is_study_file(name):
        return _template_data(name), name
    path = pathlib.Path(name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read study file {name}: {why}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML in study file {name}: {exc}") from None
    if "source" in data:
        raise ConfigError(f"study file {name}: source is written by enstune (what made the spec), not set")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"study file {name}: base must name a template, got {_show(base)}")
    if base:
        merged = _merge(_template_data(base), data)
        return merged, data.get("template", base)
    template = data.get("template", path.stem)
    return data, template if isinstance(template, str) else path.stem


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
    merged = _merge(_template_data(base, (*seen, name)), data) if base else data
    merged.pop("template", None)  # a base's name is not its heir's
    return merged


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = _deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "space":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deepcopy(value)
    return merged


def to_toml(data: dict[str, Any]) -> str:
    """``data`` (TOML's types, None values left out) as a TOML document that ``tomllib`` reads back equal."""
    lines: list[str] = []
    _toml_table(data, (), lines)
    return "\n".join(lines).strip() + "\n"


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value) + '"'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise ConfigError(f"cannot write {_show(value)} as TOML")


def _toml_table(data: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    """Scalars of table ``path`` under its header, then its sub-tables (the empty ones too: a header says they exist)."""
    scalars = {k: v for k, v in data.items() if v is not None and not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(map(_toml_key, path)) + "]")
    lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
    for key, table in tables.items():
        _toml_table(table, (*path, key), lines)
