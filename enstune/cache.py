"""Content-addressed member results in an Optuna artifact store: trained once, found by any worker."""

from __future__ import annotations

import hashlib
import io
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


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the same checkpoint has the same digest on every machine."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' shapes, dtypes and values: data that changes gets a new key."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    """Member checkpoints and predictions, one artifact per content key, in ``store``.

    Writes to a store need not be atomic (a worker may die mid-upload); a torch file is a zip
    whose directory sits at its end, so a truncated entry fails to load and counts as missing.
    """

    store: Any  # an optuna.artifacts ArtifactStore

    @staticmethod
    def artifact_id(key: str) -> str:
        """The artifact id of member ``key``."""
        return f"member-{key}.pt"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for ``key``, or None (a missing or unreadable entry)."""
        try:
            with self.store.open_reader(self.artifact_id(key)) as f:
                return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not found, or damaged: retrained and overwritten
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key``."""
        buf = io.BytesIO()
        torch.save(entry, buf)
        buf.seek(0)
        self.store.write(self.artifact_id(key), buf)
