"""Content-addressed member results in an Optuna artifact store: trained once, found by any worker."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from enstune.errors import EnstuneError

CACHE_VERSION = 1

# An entry is one header line, then the ``torch.save`` bytes (the payload) whose SHA-256 it names:
#   b"enstune-member/2 sha256=<64 hex digits>\n" + payload
# A fixed-length header lets ``put`` serialise straight after it and fill the digest in afterwards (no copy
# of the payload), and ``get`` check the digest before it unpickles anything. Entries from the previous
# format are bare torch zips (they begin with b"PK"), have no such header, and are misses: retrained once.
_PREFIX = b"enstune-member/2 sha256="
_HEADER_LEN = len(_PREFIX) + 64 + 1
_warned: set[str] = set()  # artifact ids already reported as damaged in this process


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

    Writes to a store need not be atomic (a worker may die mid-upload) and stored bytes may rot, so each
    entry carries the SHA-256 of its payload: a truncated or damaged entry fails the check and is a miss.
    """

    store: Any  # an optuna.artifacts ArtifactStore

    @staticmethod
    def artifact_id(key: str) -> str:
        """The artifact id of member ``key``."""
        return f"member-{key}.pt"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for ``key``, or None (a missing, old-format, truncated or damaged entry)."""
        artifact_id = self.artifact_id(key)
        try:
            with self.store.open_reader(artifact_id) as f:
                data = f.read()
        except Exception:  # noqa: BLE001 - not found or unreadable: retrained and overwritten
            return None
        if not data.startswith(_PREFIX) or len(data) < _HEADER_LEN or data[_HEADER_LEN - 1:_HEADER_LEN] != b"\n":
            return None  # the previous format (no digest), or a header cut short: retrained once
        payload = memoryview(data)[_HEADER_LEN:]
        if hashlib.sha256(payload).hexdigest().encode() != data[len(_PREFIX):_HEADER_LEN - 1]:
            if artifact_id not in _warned:  # once per key: every trial that needs the member would repeat it
                _warned.add(artifact_id)
                warnings.warn(f"member cache entry {artifact_id} is damaged (digest mismatch); retraining it",
                              RuntimeWarning, stacklevel=2)
            return None
        try:
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - intact bytes this torch cannot read: retrained and overwritten
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key``."""
        buf = io.BytesIO()
        buf.write(bytes(_HEADER_LEN))  # room for the header, written once the digest is known
        torch.save(entry, buf)
        with buf.getbuffer() as view:
            digest = hashlib.sha256(view[_HEADER_LEN:]).hexdigest()
        buf.seek(0)
        buf.write(_PREFIX + digest.encode() + b"\n")
        buf.seek(0)
        self.store.write(self.artifact_id(key), buf)

    def check_writable(self) -> None:
        """Fail with one line unless the store takes a write (and a removal) now."""
        probe = f"write-probe-{uuid.uuid4().hex}"
        try:
            self.store.write(probe, io.BytesIO(b"probe"))
            self.store.remove(probe)
        except Exception as exc:  # noqa: BLE001 - any store's failure is the same user error
            raise EnstuneError(f"the artifact store cannot be written ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); members could not be kept") from None

