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

# An entry is one header line, then the ``torch.save`` bytes (the payload):
#   b"enstune-member/3 key=<32 hex> sha256=<64 hex>\n" + payload
# The digest covers the key and the payload, so an entry copied over another member's fails its check
# like a damaged one. A fixed-length header lets ``put`` serialise straight after it and fill the digest
# in afterwards (no copy of the payload), and ``get`` check the digest before it unpickles anything.
# Entries of the previous format (b"enstune-member/2 sha256=<digest of the payload>\n") are read and
# rewritten in this one the first time they are found, so that members already trained are kept.
# Bare torch zips (b"PK"), from before any header, are misses: retrained once.
_PREFIX = b"enstune-member/3 key="
_KEY_LEN = 32  # hex digits of a content key
_DIGEST_AT = len(_PREFIX) + _KEY_LEN + len(b" sha256=")
_HEADER_LEN = _DIGEST_AT + 64 + 1
_PREFIX_V2 = b"enstune-member/2 sha256="
_HEADER_LEN_V2 = len(_PREFIX_V2) + 64 + 1
_warned: set[str] = set()  # artifact ids already reported as unusable in this process


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
        """The stored entry for ``key``, or None (missing, old-format, truncated, damaged, another member's, or no member)."""
        artifact_id = self.artifact_id(key)
        try:
            with self.store.open_reader(artifact_id) as f:
                data = f.read()
        except Exception:  # noqa: BLE001 - not found or unreadable: retrained and overwritten
            return None
        if data.startswith(_PREFIX_V2):
            return self._get_v2(key, data)
        if not data.startswith(_PREFIX) or len(data) < _HEADER_LEN or data[_HEADER_LEN - 1:_HEADER_LEN] != b"\n" \
                or data[_DIGEST_AT - len(b" sha256="):_DIGEST_AT] != b" sha256=":
            return None  # a bare torch zip from before headers, or a header cut short: retrained once
        payload = memoryview(data)[_HEADER_LEN:]
        held = data[len(_PREFIX):len(_PREFIX) + _KEY_LEN].decode("ascii", "replace")
        if held != key:
            return self._unusable(artifact_id, f"holds member {held}, not {key}")
        if _digest(key, payload).encode() != data[_DIGEST_AT:_HEADER_LEN - 1]:
            return self._unusable(artifact_id, "is damaged (digest mismatch)")
        return self._load(artifact_id, payload)

    def _get_v2(self, key: str, data: bytes) -> dict[str, Any] | None:
        """An entry of the previous format (its digest covers the payload alone), rewritten in the current one."""
        artifact_id = self.artifact_id(key)
        if len(data) < _HEADER_LEN_V2 or data[_HEADER_LEN_V2 - 1:_HEADER_LEN_V2] != b"\n":
            return None
        payload = memoryview(data)[_HEADER_LEN_V2:]
        if hashlib.sha256(payload).hexdigest().encode() != data[len(_PREFIX_V2):_HEADER_LEN_V2 - 1]:
            return self._unusable(artifact_id, "is damaged (digest mismatch)")
        entry = self._load(artifact_id, payload)
        if entry is not None:
            try:  # bound to its key from now on; where the store takes no write, it is read as it is next time
                self.put(key, entry)
            except Exception:  # noqa: BLE001 - the member itself is intact
                pass
        return entry

    def _load(self, artifact_id: str, payload: memoryview) -> dict[str, Any] | None:
        """The member in ``payload``, or None (with one warning) where it is not one."""
        try:
            entry = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - intact bytes this torch cannot read: retrained and overwritten
            return self._unusable(artifact_id, f"cannot be read ({type(exc).__name__})")
        problem = _not_a_member(entry)
        return entry if problem is None else self._unusable(artifact_id, f"is not a member ({problem})")

    @staticmethod
    def _unusable(artifact_id: str, why: str) -> None:
        """Warn once per entry (every trial that needs the member would repeat it) that it is retrained."""
        if artifact_id not in _warned:
            _warned.add(artifact_id)
            warnings.warn(f"member cache entry {artifact_id} {why}; retraining it", RuntimeWarning, stacklevel=3)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key``."""
        if len(key) != _KEY_LEN or not key.isascii():
            raise ValueError(f"a member cache key is {_KEY_LEN} ASCII characters, got {key!r}")
        buf = io.BytesIO()
        buf.write(bytes(_HEADER_LEN))  # room for the header, written once the digest is known
        torch.save(entry, buf)
        with buf.getbuffer() as view:
            digest = _digest(key, view[_HEADER_LEN:])
        buf.seek(0)
        buf.write(_PREFIX + key.encode() + b" sha256=" + digest.encode() + b"\n")
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



def _digest(key: str, payload: memoryview) -> str:
    """SHA-256 of an entry's key and payload."""
    digest = hashlib.sha256(key.encode())
    digest.update(b"\n")
    digest.update(payload)
    return digest.hexdigest()


def _not_a_member(entry: Any) -> str | None:  # noqa: ANN401 - whatever the file held
    """What makes ``entry`` no member cache entry, or None: weights, predictions and epochs of the right types."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}, not a dict"
    for name, kind, what in (("state", dict, "a dict"), ("val", torch.Tensor, "a tensor"),
                             ("test", torch.Tensor, "a tensor"), ("epochs", int, "an integer")):
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return f"{name!r} is missing or not {what}"
    for name in ("state", "extras"):
        tensors = entry.get(name, {})
        if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in tensors.items()):
            return f"{name!r} is not a map of names to tensors"
    return None
