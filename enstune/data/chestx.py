"""ChestX-ray14 as the NIH releases it, single-label images of seven findings (StarSSE paper, Appendix N).

The release: ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` with ``|`` between
findings), ``train_val_list.txt`` and ``test_list.txt``, and the PNGs in ``images_001/images/``
… ``images_012/images/`` (or one ``images/`` folder). As Ericsson et al. (2021) and the paper's
code (after the CD-FSL benchmark's ChestX), an image with several findings is dropped, and so are
"No Finding" and the findings outside the seven classes (Pneumonia among them): 19,491 training
and 6,357 test images of the release.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from enstune.data._base import TaskData
from enstune.data._registry import register_dataset
from enstune.data.folders import FOLDER_SETTINGS, folder_task
from enstune.errors import EnstuneError

# The classes in the paper's code's label order (its labels_maps).
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
ENTRIES, TRAIN_LIST, TEST_LIST = "Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"
FOLDERS = ("chestx", "ChestX-ray14", ".")  # under data_dir: where the release may be unpacked


def _release(data_dir: Path) -> Path:
    """The folder under ``data_dir`` that holds the release's files."""
    for name in FOLDERS:
        if (data_dir / name / ENTRIES).is_file():
            return data_dir / name
    raise EnstuneError(f"ChestX-ray14 not found: expected {ENTRIES}, {TRAIN_LIST}, {TEST_LIST} and images_001/images/ "
                       f"in one of {', '.join(str(data_dir / n) for n in FOLDERS)}")


def _images(root: Path) -> dict[str, str]:
    """Each PNG's name -> its path under ``root``, from images_NNN/images/ (the release's parts) or images/."""
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name.startswith("images"))
    where: dict[str, str] = {}
    for folder in folders:
        inner = root / folder / "images" if (root / folder / "images").is_dir() else root / folder
        rel = os.path.relpath(inner, root)
        where.update((e.name, f"{rel}/{e.name}") for e in os.scandir(inner) if e.name.endswith(".png"))
    if not where:
        raise EnstuneError(f"no ChestX-ray14 images under {root}: expected images_001/images/*.png … images_012/")
    return where


def _findings(entries: Path) -> dict[str, str]:
    """Image name -> its one finding of ``FINDINGS``; images with several findings, none or others are left out."""
    with open(entries, newline="") as f:
        rows = csv.DictReader(f)
        if not {"Image Index", "Finding Labels"} <= set(rows.fieldnames or ()):
            raise EnstuneError(f"{entries}: expected the columns 'Image Index' and 'Finding Labels', "
                               f"got {', '.join(rows.fieldnames or ()) or 'none'}")
        return {row["Image Index"].strip(): label for row in rows
                if (label := row["Finding Labels"].strip()) in FINDINGS}


def _listed(root: Path, listing: str, findings: dict[str, str], where: dict[str, str]) -> tuple[list[str], list[int]]:
    path = root / listing
    if not path.is_file():
        raise EnstuneError(f"ChestX-ray14 split list not found: expected {path}")
    names = [n for n in map(str.strip, path.read_text().splitlines()) if n in findings]
    missing = [n for n in names if n not in where]
    if missing:
        raise EnstuneError(f"{path} lists {len(missing)} single-finding images missing under {root}, e.g. {missing[0]}")
    return [where[n] for n in names], [FINDINGS.index(findings[n]) for n in names]


@register_dataset("chestx", settings=FOLDER_SETTINGS)
def chestx(task, home: Path) -> TaskData:  # noqa: ANN001 - enstune.config.Task
    """ChestX-ray14 under ``task.data_dir`` (or its chestx/ or ChestX-ray14/): seven single-finding classes."""
    root = _release(Path(task.data_dir.format(home=home)))
    findings, where = _findings(root / ENTRIES), _images(root)
    train, test = _listed(root, TRAIN_LIST, findings, where), _listed(root, TEST_LIST, findings, where)
    if not train[0] or not test[0]:
        raise EnstuneError(f"ChestX-ray14 under {root}: no single-finding image of {', '.join(FINDINGS)} "
                           f"in {TRAIN_LIST if not train[0] else TEST_LIST}")
    return folder_task(task, home, root, train, test, FINDINGS)
