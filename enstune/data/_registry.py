"""The dataset registry: builders ``fn(task, home) -> TaskData``; implementations import this, not the package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enstune.data._base import TaskData
from enstune.registry import Registry
from enstune.settings import Setting

DATASETS: Registry[Callable[[Any, Path], TaskData]] = Registry("dataset")
# Datasets that read nothing under task.data_dir (the demo makes its own), and those whose data_dir is
# what names the data (any tree of class folders): a study on pets and one on cars are two datasets.
NO_FILES: set[str] = set()
NAMED_BY_FOLDER: set[str] = set()
SETTINGS: dict[str, dict[str, Setting]] = {}  # the settings each dataset reads from ``task.options``


def register_dataset(name: str, *, files: bool = True, named_by_folder: bool = False,
                     settings: dict[str, Setting] | None = None) -> Callable[[Callable[[Any, Path], TaskData]], Any]:
    """A decorator that registers a dataset builder; ``files=False``: it reads no data_dir; ``named_by_folder``: its
    data_dir's last component names the data (``enstune.recommend`` tells such datasets apart by it); ``settings``:
    what it reads from ``task.options``."""
    register = DATASETS.register(name)  # refuses a name registered twice before anything else is recorded
    if not files:
        NO_FILES.add(name)
    if named_by_folder:
        NAMED_BY_FOLDER.add(name)
    SETTINGS[name] = dict(settings or {})
    return register


def dataset_settings(name: str) -> dict[str, Setting]:
    """The settings dataset ``name`` reads from ``task.options``."""
    DATASETS.get(name)
    return SETTINGS[name]


def reads_files(name: str) -> bool:
    """Whether dataset ``name`` reads its data from ``task.data_dir``."""
    return name not in NO_FILES


def dataset_label(task: Any) -> str:
    """What names a task's data: its dataset, or for a tree of class folders the data_dir's last component."""
    if task.dataset in NAMED_BY_FOLDER:
        folder = Path(task.data_dir.rstrip("/\\")).name.lower()
        return folder or task.dataset
    return task.dataset


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


def load_task_data(task: Any, home: Path) -> TaskData:
    """Build the splits of ``task.dataset`` (an ``enstune.config.Task``)."""
    return DATASETS.get(task.dataset)(task, Path(home))
