"""Datasets: a registry of builders that turn a Task into train/val/test splits held as tensors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from enstune.data._base import Split, TaskData, batches, carve_validation
from enstune.errors import ConfigError

_REGISTRY: dict[str, Callable[..., TaskData]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., TaskData]], Callable[..., TaskData]]:
    """Register a builder ``fn(task, home) -> TaskData`` under ``name``."""

    def deco(fn: Callable[..., TaskData]) -> Callable[..., TaskData]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return sorted(_REGISTRY)


def load_task_data(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """Build the splits of ``task.dataset``."""
    if task.dataset not in _REGISTRY:
        raise ConfigError(f"unknown dataset {task.dataset!r}; known: {', '.join(list_datasets())}")
    return _REGISTRY[task.dataset](task, Path(home))


from enstune.data import cifar, demo  # noqa: E402,F401  (registration)

__all__ = ["Split", "TaskData", "batches", "carve_validation", "list_datasets", "load_task_data", "register_dataset"]
