"""DomainNet's Clipart domain as released (StarSSE paper, Appendix N).

The release: ``clipart/<class>/<file>.jpg`` and the lists ``clipart_train.txt`` /
``clipart_test.txt`` beside ``clipart/`` (or inside it), each line ``clipart/<class>/<file>.jpg
<label>``; 345 classes, 33,525 training and 14,604 test images. The classes' names are their
folders' ("The_Eiffel_Tower" read as "The Eiffel Tower").
"""

from __future__ import annotations

from pathlib import Path

from enstune.data._base import TaskData
from enstune.data._registry import register_dataset
from enstune.data.folders import FOLDER_SETTINGS, folder_task
from enstune.errors import EnstuneError


def _list_file(data_dir: Path, domain: str, split: str) -> Path:
    name = f"{domain}_{split}.txt"
    for place in (data_dir, data_dir / domain):
        if (place / name).is_file():
            return place / name
    raise EnstuneError(f"DomainNet {domain} not found: expected {data_dir / name} (or {data_dir / domain / name}) "
                       f"and the images under {data_dir / domain}")


def _listed(data_dir: Path, listing: Path, names: dict[int, str]) -> tuple[list[str], list[int]]:
    """The (file, label) pairs of a list file; ``names`` gathers each label's class folder."""
    files, labels = [], []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0].count("/") < 2:
            raise EnstuneError(f"{listing}:{number}: expected '<domain>/<class>/<file>.jpg <label>', got {line.strip()!r}")
        file, label = parts[0], int(parts[1])
        folder = file.split("/")[1]
        if names.setdefault(label, folder) != folder:
            raise EnstuneError(f"{listing}:{number}: label {label} is class {names[label]!r} elsewhere, {folder!r} here")
        files.append(file)
        labels.append(label)
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        raise EnstuneError(f"{listing} lists {len(missing)} images missing under {data_dir}, e.g. {missing[0]}")
    return files, labels


def domainnet(task, home: Path, domain: str) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """One DomainNet domain under ``task.data_dir``: its released train and test lists."""
    data_dir = Path(task.data_dir.format(home=home))
    names: dict[int, str] = {}
    train = _listed(data_dir, _list_file(data_dir, domain, "train"), names)
    test = _listed(data_dir, _list_file(data_dir, domain, "test"), names)
    if not train[0] or not test[0]:
        raise EnstuneError(f"DomainNet {domain} under {data_dir}: an empty list of {'training' if not train[0] else 'test'} images")
    unnamed = [label for label in range(max(names) + 1) if label not in names]
    if unnamed:
        raise EnstuneError(f"DomainNet {domain}: labels {unnamed[:5]} have no image in either list")
    classes = [names[label].replace("_", " ") for label in range(len(names))]
    return folder_task(task, home, data_dir, train, test, classes)


@register_dataset("clipart", settings=FOLDER_SETTINGS)
def clipart(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """DomainNet Clipart under ``task.data_dir``: clipart/<class>/… and clipart_train.txt, clipart_test.txt."""
    return domainnet(task, home, "clipart")
