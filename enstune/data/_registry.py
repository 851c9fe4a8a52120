"""The dataset registry: builders ``fn(task, home) -> TaskData``; implementations import this, not the package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enstune.data._base import TaskData
from enstune.registry import Registry

DATASETS: Registry[Callable[[Any, Path], TaskData]] = Registry("dataset")
# Datasets that read nothing under task.data_dir (the demo makes its own), and those whose data_dir is
# what names the data (any tree of class folders): a study on pets and one on cars are two datasets.
NO_FILES: set[str] = set()
NAMED_BY_FOLDER: set[str] = set()


def register_dataset(name: str, *, files: bool = True,
                     named_by_folder: bool = False) -> Callable[[Callable[[Any, Path], TaskData]], Any]:
    """A decorator that registers a dataset builder; ``files=False``: it reads no data_dir; ``named_by_folder``: its
    data_dir's last component names the data (``enstune.recommend`` tells such datasets apart by it)."""
    if not files:
        NO_FILES.add(name)
    if named_by_folder:
        NAMED_BY_FOLDER.add(name)
    return DATASETS.register(name)


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
