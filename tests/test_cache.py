"""The member cache: round trips, and damaged, truncated, old-format or missing entries are misses."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from enstune.cache import MemberCache, content_key


def entry(n: int = 1 << 20) -> dict:
    """A member entry whose file is mostly one tensor's data, so the middle byte of the file lies inside it."""
    g = torch.Generator().manual_seed(0)
    return {"state": {"w": torch.randn(n, generator=g), "b": torch.zeros(3)},
            "val": torch.rand(8, 4, generator=g), "test": torch.rand(8, 4, generator=g), "epochs": 3}


def same(a: dict, b: dict) -> bool:
    """Whether two entries hold equal tensors and epochs."""
    return (a["epochs"] == b["epochs"] and a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
            and torch.equal(a["val"], b["val"]) and torch.equal(a["test"], b["test"]))


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    """A real artifact store in a fresh directory."""
    (tmp_path / "artifacts").mkdir()
    return FileSystemArtifactStore(tmp_path / "artifacts")


def stored(store: FileSystemArtifactStore, key: str) -> Path:
    """The file that holds member ``key`` in ``store``."""
    return Path(store._base_path) / MemberCache.artifact_id(key)


def misses(cache: MemberCache, key: str) -> list[str]:
    """Read ``key`` twice, expecting a miss both times; the warning lines it reported."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.get(key) is None
        assert cache.get(key) is None
    return [str(w.message) for w in caught]


def test_round_trip(store):
    cache, key = MemberCache(store), content_key(test="round_trip")
    cache.put(key, e := entry())
    assert same(cache.get(key), e)


def test_flipped_byte_is_a_miss_reported_once_then_rewritten(store):
    cache, key = MemberCache(store), content_key(test="flipped")
    cache.put(key, e := entry())
    path = stored(store, key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the big tensor's storage: the zip itself stays readable
    path.write_bytes(bytes(data))
    assert misses(cache, key) == [f"member cache entry {MemberCache.artifact_id(key)} is damaged "
                                  "(digest mismatch); retraining it"]
    cache.put(key, e)  # what the caller does after retraining
    assert same(cache.get(key), e)


def test_truncated_entry_is_a_miss(store):
    cache, key = MemberCache(store), content_key(test="truncated")
    cache.put(key, entry())
    path = stored(store, key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert len(misses(cache, key)) <= 1


def test_old_format_entry_is_a_miss(store):
    cache, key = MemberCache(store), content_key(test="old_format")
    buf = io.BytesIO()
    torch.save(entry(), buf)  # how entries were written before they carried a digest
    buf.seek(0)
    store.write(MemberCache.artifact_id(key), buf)
    assert misses(cache, key) == []


def test_missing_key_is_a_miss(store):
    assert misses(MemberCache(store), content_key(test="missing")) == []


def test_large_entry_round_trips(store):
    cache, key = MemberCache(store), content_key(test="large")
    cache.put(key, e := entry(50 * (1 << 20) // 4))  # 50 MB of float32
    assert same(cache.get(key), e)
