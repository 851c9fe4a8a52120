"""Datasets: a registry of builders that turn a Task into unbound train/val/test splits."""

from __future__ import annotations

from enstune.data._base import MIN_SHARE, Split, TaskData, TensorSplit, carve_validation, steps_per_epoch
from enstune.data._registry import (dataset_label, dataset_settings, list_datasets, load_task_data, reads_files,
                                    register_dataset)
from enstune.data import chestx, cifar, demo, domainnet, folders, imagenet  # noqa: E402,F401,I001  (registration, after the registry)

__all__ = ["MIN_SHARE", "Split", "TaskData", "TensorSplit", "carve_validation", "dataset_label", "list_datasets",
           "load_task_data", "reads_files", "register_dataset", "steps_per_epoch", "dataset_settings"]
