"""Registry of ensembling methods; nothing outside this package knows their names."""

from __future__ import annotations

from enstune.errors import ConfigError
from enstune.methods._base import MemberJob, Method, Recipe, first_member, member_seed, regularize

_REGISTRY: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under ``cls.name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The method called ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return _REGISTRY[name]


from enstune.methods import deep_ensembles, finetune, snapshot  # noqa: E402,F401  (registration)

__all__ = ["MemberJob", "Method", "Recipe", "first_member", "get_method", "list_methods", "member_seed",
           "register_method"]
