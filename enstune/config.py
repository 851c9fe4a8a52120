"""A study's configuration as users write it: templates and study files (TOML), ``--set`` overrides, TOML out.

The spec's types live in ``enstune.spec`` and its value rules in ``enstune.spec_rules``; this module
is their face too, so ``from enstune.config import StudySpec, load_template`` serves every caller.
Plain data: names of datasets, methods, regularizers, optimizers and evaluators are checked
against their registries where a study is created (``enstune.checks``), not here.
"""

from __future__ import annotations

import importlib.resources
import math
import pathlib
import tomllib
from typing import Any

from enstune.errors import ConfigError
from enstune.spec import (  # noqa: F401 - the face of the spec's types
    LATER_MEMBER_AXES, MAX_BATCH, MAX_EPOCHS, MAX_EPOCH_MULT, MAX_GRID, MAX_HEARTBEAT, MAX_IMAGES,
    MAX_INTERP_POINTS, MAX_LR_MULT, MAX_MEMBERS, MAX_SEED, MAX_STEPS, MAX_TRIALS, Param,
    SHARED_PARAMS, StudySpec, TRIAL_PARAMS, Task, TrialConfig, _show, build, migrate, to_dict)
from enstune.spec_rules import (  # noqa: F401 - and of its rules
    RECIPE_RULES, STUDY_RANGES, spec_from_dict, study_methods, validate)


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
        merged = _merge(_template_data(base), migrate(data))
        return merged, data.get("template", base)
    template = data.get("template", path.stem)
    return migrate(data), template if isinstance(template, str) else path.stem


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
    merged = _merge(_template_data(base, (*seen, name)), migrate(data)) if base else migrate(data)
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
