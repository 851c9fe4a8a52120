"""A plugin's own settings: each method, regularizer, dataset, model family and optimizer declares the names it
reads, their defaults and the values they may take; a spec's ``options`` tables hold the values a study sets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enstune.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One setting: its default (whose type is the setting's), and a range ``low..high`` or a list of ``choices``.

    A default of None means "unset: the plugin's own" (timm's stochastic depth is each network's); ``of`` then
    names the type a value has.
    """

    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    of: type | None = None

    def __post_init__(self) -> None:
        if self.default is None and self.of is None:
            raise ValueError("a setting without a default names the type of its values (of=...)")

    @property
    def kind(self) -> type:
        """The type every value has (an int setting takes whole numbers, a float one any finite number)."""
        return self.of or type(self.default)

    def rule(self) -> str:
        """What a value must be, as an error says it."""
        if self.choices:
            shown = [str(c) for c in self.choices]
            return f"one of {', '.join(shown[:-1])} or {shown[-1]}" if len(shown) > 1 else shown[0]
        what = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}[self.kind]
        low, high = (None if v is None else repr(int(v)) if float(v).is_integer() else repr(v) for v in (self.low, self.high))
        if low is not None and high is not None:
            return f"{what} in {low}..{high}"
        if low is not None:
            return f"{what} >= {low}"
        return what if high is None else f"{what} <= {high}"

    def check(self, key: str, value: Any) -> Any:
        """``value`` as this setting takes it (an int where a float is due becomes a float); else a ConfigError."""
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) < 2**53 else math.inf
        if kind is int and isinstance(value, float) and value.is_integer():  # 20.0 from a table read as floats
            value = int(value)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ok = ok and (kind is not float or math.isfinite(value))
        ok = ok and (not self.choices or value in self.choices)
        ok = ok and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + "…"
            raise ConfigError(f"{key} must be {self.rule()}, got {shown}")
        return value


def check_options(values: Mapping[str, Any], declared: Mapping[str, Setting], prefix: str, owners: str) -> None:
    """Every value of ``values`` is a setting ``declared`` by the plugins ``owners`` names, and one it takes."""
    for name, value in values.items():
        if name not in declared:
            known = f"they read {', '.join(sorted(declared))}" if declared else "they take no options"
            raise ConfigError(f"{prefix}{name}: {owners} read no such option; {known}")
        declared[name].check(f"{prefix}{name}", value)


def describe(table: str, declared: Mapping[str, Setting]) -> list[str]:
    """TOML comment lines naming each setting of ``declared`` a study may give in ``table``: default, rule, help."""
    def shown(value: Any) -> str:
        if value is None:
            return "(unset)"
        if isinstance(value, bool):
            return "true" if value else "false"
        return f'"{value}"' if isinstance(value, str) else repr(value)

    return [f"# [{table}] {name} = {shown(s.default)}  ({s.rule()}): {s.help}" for name, s in sorted(declared.items())]


def away_from_defaults(values: Mapping[str, Any], declared: Mapping[str, Setting]) -> tuple[tuple[str, Any], ...]:
    """The settings of ``declared`` that ``values`` sets away from their defaults, as sorted pairs: a job or recipe
    that sets one to its default is the one that leaves it out, member key included."""
    return tuple(sorted((k, values[k]) for k, s in declared.items() if k in values and values[k] != s.default))


def resolved(values: Mapping[str, Any], declared: Mapping[str, Setting]) -> dict[str, Any]:
    """The value of every setting in ``declared``: ``values``' where set, else the default."""
    return {name: values.get(name, s.default) for name, s in declared.items()}
