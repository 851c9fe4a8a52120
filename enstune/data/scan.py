"""Unreadable image files, found before a trial starts: one scan per listing, recorded under the runs directory.

A corrupt file (truncated, empty, text under an image's name) would fail a DataLoader worker
mid-epoch in a message that names no file, and fail the trial again on every retry. ``readable``
decodes every listed file once (a JPEG at an eighth of its scale, which still reads all its
data), leaves the unreadable ones out of the split with one line each, and refuses a listing
that would lose more than ``MAX_UNREADABLE`` of its images. The verdict is recorded in
``{home}/scans``, keyed by the listing's names and file sizes, so later workers and member
processes read it instead of decoding again; a lock makes workers that start together wait for
the first one's scan.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from enstune.errors import EnstuneError

MAX_UNREADABLE = 0.01  # the share of a listing's images that may be left out before it is refused
NAMED = 20  # unreadable files named one line each when found; the record lists them all
CHUNK = 64  # files a scanning worker checks per batch
# Dataset images are trusted input: a panorama or a whole-slide scan is larger than PIL's guard
# against decompression bombs (89M pixels warns, 179M fails); beyond a gigapixel is unreadable.
MAX_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

log = logging.getLogger("enstune.data")


class Unreadable(NamedTuple):
    """What a loader's worker hands over for a file it cannot read: the main process decides what follows."""

    path: str
    reason: str


def unreadable_reason(path: str) -> str:
    """Why the image at ``path`` cannot be decoded to RGB, in a few words; "" when it can."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # the smallest DCT scale: all the data is read, a fraction decoded
            image.load()
            image.convert("RGB")
    # Any failure of any of PIL's decoders (OSError, SyntaxError, struct.error, ...) makes a file
    # unreadable here: that is the verdict wanted, and nothing else runs in this call.
    except Exception as exc:  # noqa: BLE001
        text = " ".join(str(exc).split()) or type(exc).__name__
        return f"{type(exc).__name__}: {text}"[:200]
    return ""


class _Checks(Dataset):
    """Item i: the reason file i cannot be read ("" when it can)."""

    def __init__(self, root: Path, files: Sequence[str]) -> None:
        # One bytes array, not a list of str: forked workers would copy every object's page.
        self.root, self.files = os.fspath(root), np.array([os.fsencode(f) for f in files])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> str:
        return unreadable_reason(os.path.join(self.root, os.fsdecode(self.files[index])))


def _listing_digest(root: Path, files: Sequence[str]) -> str:
    """From the names and sizes, as ``FolderSplit.digest``: a file replaced by another size is scanned again."""
    h = hashlib.sha256()
    for name in files:
        try:
            size = os.stat(root / name).st_size
        except OSError:
            size = -1
        h.update(f"{name}\t{size}\n".encode())
    return h.hexdigest()


def scan(root: Path, files: Sequence[str], workers: int = 0) -> dict[str, str]:
    """{file: reason} for each of ``files`` under ``root`` that cannot be decoded, in ``workers`` processes."""
    workers = min(workers, len(files) // CHUNK)  # a short listing is quicker checked than processes are started
    loader = DataLoader(_Checks(root, files), batch_size=CHUNK, num_workers=workers, collate_fn=list)
    reasons = [reason for batch in loader for reason in batch]
    return {name: reason for name, reason in zip(files, reasons) if reason}


def _recorded(record: Path, root: Path, files: Sequence[str], workers: int) -> tuple[dict[str, str], bool]:
    """The listing's verdict: read from ``record``, or scanned and written there; True when scanned now."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        lock = open(record.with_suffix(".lock"), "a")  # noqa: SIM115 - held across the scan
    except OSError:  # a runs directory that takes no writes: scan, record nothing
        return scan(root, files, workers), True
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a worker that starts beside the scanning one waits for its record
        try:
            return json.loads(record.read_text())["unreadable"], False
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not scanned yet, or a record cut short: scan again
        log.info("checking that the %d images under %s decode (once; recorded in %s)", len(files), root, record)
        bad = scan(root, files, workers)
        part = record.with_name(f"{record.name}.{os.getpid()}.part")
        try:
            part.write_text(json.dumps({"root": os.fspath(root), "images": len(files), "unreadable": bad}, indent=1))
            os.replace(part, record)
        except OSError:
            part.unlink(missing_ok=True)
        return bad, True


def readable(root: Path, files: Sequence[str], labels: Sequence[int], *, home: Path, name: str,
             workers: int = 0) -> tuple[list[str], list[int], int]:
    """(files, labels) of the listing without its unreadable images, and how many were left out.

    ``name`` says what the listing is ("sun397 train"); a listing that loses more than
    ``MAX_UNREADABLE`` of its images is refused in one line.
    """
    key = "-".join(name.split()).replace(os.sep, "_")
    record = Path(home) / "scans" / f"{key}-{_listing_digest(Path(root), files)[:24]}.json"
    bad, now = _recorded(record, Path(root), files, workers)
    if len(bad) > MAX_UNREADABLE * len(files):
        first, reason = next(iter(bad.items()))
        raise EnstuneError(f"{name}: {len(bad)} of {len(files)} images under {root} cannot be read, more than "
                           f"the {MAX_UNREADABLE:.0%} a dataset may lose (e.g. {first}: {reason}; all in {record})")
    if not bad:
        return list(files), list(labels), 0
    if now:
        for file, reason in list(bad.items())[:NAMED]:
            warnings.warn(f"{name}: left out {root / file}, which cannot be read ({reason})", stacklevel=2)
    if not now or len(bad) > NAMED:
        warnings.warn(f"{name}: {len(bad)} unreadable images left out, listed in {record}", stacklevel=2)
    keep = [i for i, f in enumerate(files) if f not in bad]
    return [files[i] for i in keep], [labels[i] for i in keep], len(bad)
