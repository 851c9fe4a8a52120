"""Content-addressed member results: shared members are trained once per worker pool."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_VERSION = 1


def content_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable ``parts``."""
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class MemberCache:
    """Member checkpoints and predictions under ``root``, one file per content key."""

    root: Path

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for ``key``, or None (an unreadable entry counts as missing)."""
        path = self.root / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged entry is retrained and overwritten
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key``."""
        save_atomic(entry, self.root / f"{key}.pt")
