"""The dataset registry: builders ``fn(task, home) -> TaskData``; implementations import this, not the package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enstune.data._base import TaskData
from enstune.registry import Registry

DATASETS: Registry[Callable[[Any, Path], TaskData]] = Registry("dataset")
register_dataset = DATASETS.register


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


def load_task_data(task: Any, home: Path) -> TaskData:
    """Build the splits of ``task.dataset`` (an ``enstune.config.Task``)."""
    return DATASETS.get(task.dataset)(task, Path(home))
