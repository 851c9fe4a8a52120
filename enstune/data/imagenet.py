"""ImageNet-1k in the layouts it is found in: sorted class folders, Kaggle's, and torchvision's devkit.

Training images are always class folders (``train/n01440764/…``). The validation images, the test
split, are either sorted into the same folders, or flat (``val/ILSVRC2012_val_00000001.JPEG``)
with their labels in Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the first
word of which is the WordNet ID) or in torchvision's ``meta.bin`` (made from the devkit archive
``ILSVRC2012_devkit_t12.tar.gz`` by torchvision's own parser). Kaggle's release keeps the images
under ``ILSVRC/Data/CLS-LOC/``. The classes are named as CLIP's zero-shot classifier names
them: open_clip's ``IMAGENET_CLASSNAMES``, found by the index of each ID in timm's list of the
1,000 (curated names: WordNet's first synonyms call two classes "crane" and two "maillot").
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from enstune.data._base import TaskData
from enstune.data._registry import register_dataset
from enstune.data.folders import FOLDER_SETTINGS, _folder, folder_task
from enstune.errors import EnstuneError

KAGGLE = Path("ILSVRC", "Data", "CLS-LOC")  # where Kaggle's release keeps train/ and val/
SOLUTION, SYNSETS = "LOC_val_solution.csv", "LOC_synset_mapping.txt"  # Kaggle's labels and names
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"


def class_names(wnids: Sequence[str], fallback: dict[str, str] | None = None) -> tuple[str, ...]:
    """Readable names of ImageNet classes: open_clip's for the 1,000 of ILSVRC-2012, else ``fallback``'s, else the ID."""
    import open_clip
    from timm.data import ImageNetInfo

    index = {w: i for i, w in enumerate(ImageNetInfo().label_names())}  # the 1,000 IDs in the usual label order
    names = open_clip.IMAGENET_CLASSNAMES
    return tuple(names[index[w]] if w in index else (fallback or {}).get(w, w) for w in wnids)


def _synonyms(root: Path) -> dict[str, str]:
    """WordNet ID -> its first synonym, from torchvision's meta.bin or Kaggle's LOC_synset_mapping.txt."""
    from torchvision.datasets.imagenet import META_FILE, load_meta_file

    if (root / META_FILE).is_file():
        return {w: names[0] for w, names in load_meta_file(os.fspath(root))[0].items()}
    if (root / SYNSETS).is_file():
        pairs = (line.split(" ", 1) for line in (root / SYNSETS).read_text().splitlines() if line.strip())
        return {p[0]: p[1].split(",")[0].strip() for p in pairs if len(p) == 2}
    return {}


def _val_labels(root: Path, images: list[str]) -> list[str]:
    """The WordNet ID of each flat validation image, from Kaggle's solution file or torchvision's meta.bin."""
    from torchvision.datasets.imagenet import META_FILE, load_meta_file, parse_devkit_archive

    if (root / SOLUTION).is_file():
        with open(root / SOLUTION, newline="") as f:
            rows = csv.DictReader(f)
            if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or ()):
                raise EnstuneError(f"{root / SOLUTION}: expected the columns ImageId and PredictionString")
            solution = {row["ImageId"]: row["PredictionString"].split()[0] for row in rows if row["PredictionString"]}
        unknown = [i for i in images if Path(i).stem not in solution]
        if unknown:
            raise EnstuneError(f"{root / SOLUTION} has no label for {len(unknown)} validation images, e.g. {unknown[0]}")
        return [solution[Path(i).stem] for i in images]
    if not (root / META_FILE).is_file() and (root / DEVKIT).is_file():
        try:
            parse_devkit_archive(os.fspath(root))  # torchvision's parser writes meta.bin beside the archive
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise EnstuneError(f"cannot read the devkit {root / DEVKIT}: {' '.join(str(exc).split())}") from None
    if (root / META_FILE).is_file():
        wnids = load_meta_file(os.fspath(root))[1]
        if len(wnids) != len(images):
            raise EnstuneError(f"{root / META_FILE} labels {len(wnids)} validation images, {len(images)} are in val/")
        return list(wnids)  # in the order of the sorted file names, as torchvision's parse_val_archive pairs them
    raise EnstuneError(f"{root} has validation images but no class folders nor labels for them: expected "
                       f"val/<wnid>/ folders, Kaggle's {SOLUTION}, or torchvision's meta.bin or {DEVKIT}")


def _test(root: Path, val: Path, class_to_idx: dict[str, int]) -> tuple[list[str], list[int]]:
    if any(e.is_dir() for e in os.scandir(val)):
        files, labels, _ = _folder(val, class_to_idx)
        return files, labels
    images = sorted(e.name for e in os.scandir(val) if e.name.lower().endswith(IMG_EXTENSIONS))
    if not images:
        raise EnstuneError(f"no images found under {val}")
    wnids = _val_labels(root, images)
    extra = sorted({w for w in wnids if w not in class_to_idx})
    if extra:
        raise EnstuneError(f"{val} has images of classes that the training set lacks: {', '.join(extra[:5])}")
    return images, [class_to_idx[w] for w in wnids]


@register_dataset("imagenet", settings=FOLDER_SETTINGS)
def imagenet(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """ImageNet-1k under ``task.data_dir``: train/ class folders; val/ (the test split) sorted or flat with labels."""
    root = Path(task.data_dir.format(home=home))
    images = root / KAGGLE if (root / KAGGLE / "train").is_dir() else root
    train, val = images / "train", images / "val"
    files, labels, wnids = _folder(train)
    if not val.is_dir():
        raise EnstuneError(f"no test images: expected {val}")
    test = _test(root, val, {w: i for i, w in enumerate(wnids)})
    return folder_task(task, home, train, (files, labels), test, class_names(wnids, _synonyms(root)), val)
