"""The method registry; implementations import this, not the package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from enstune.registry import Registry

if TYPE_CHECKING:
    from enstune.methods._base import Method

METHODS: Registry[Method] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Register a Method subclass under ``cls.name``."""
    METHODS.add(cls.name, cls())
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


def get_method(name: str) -> Method:
    """The method called ``name``."""
    return METHODS.get(name)
