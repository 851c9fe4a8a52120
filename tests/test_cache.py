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
    # A ResourceWarning is the garbage collector finding another test's object (a database connection) unclosed.
    return [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]


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


def test_an_entry_copied_over_another_members_is_a_miss_with_one_warning(store):
    cache, mine, theirs = MemberCache(store), content_key(test="mine"), content_key(test="theirs")
    cache.put(mine, entry())
    cache.put(theirs, other := entry(1 << 10))
    stored(store, mine).write_bytes(stored(store, theirs).read_bytes())  # a whole, valid entry: the wrong member
    assert misses(cache, mine) == [f"member cache entry {MemberCache.artifact_id(mine)} holds member {theirs}, "
                                   f"not {mine}; retraining it"]
    assert same(cache.get(theirs), other)


@pytest.mark.parametrize("payload, why", [
    ({"weights": {"w": torch.zeros(3)}}, "'state' is missing or not a dict"),
    ({"state": {"w": torch.zeros(3)}, "val": torch.zeros(2, 2), "test": torch.zeros(2, 2), "epochs": "3"},
     "'epochs' is missing or not an integer"),
    ({"state": {"w": 1.0}, "val": torch.zeros(2, 2), "test": torch.zeros(2, 2), "epochs": 3},
     "'state' is not a map of names to tensors"),
    ([1, 2, 3], "a list, not a dict"),
])
def test_a_valid_torch_file_that_is_no_member_is_a_miss_with_one_warning(store, payload, why):
    import hashlib

    from enstune import cache as module

    cache, key = MemberCache(store), content_key(test=f"no-member-{why}")
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    # a header recomputed for these bytes: the digest and the key hold, the structure does not
    digest = hashlib.sha256(key.encode() + b"\n" + body).hexdigest()
    header = module._PREFIX + key.encode() + b" sha256=" + digest.encode() + b"\n"
    store.write(MemberCache.artifact_id(key), io.BytesIO(header + body))
    assert misses(cache, key) == [f"member cache entry {MemberCache.artifact_id(key)} is not a member ({why}); "
                                  f"retraining it"]


def _v2(e: dict) -> bytes:
    """An entry as the previous format wrote it: a header with the payload's digest alone, no key."""
    import hashlib

    buf = io.BytesIO()
    torch.save(e, buf)
    body = buf.getvalue()
    return b"enstune-member/2 sha256=" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def test_an_entry_of_the_previous_format_is_read_and_rewritten_bound_to_its_key(store):
    cache, key = MemberCache(store), content_key(test="v2")
    store.write(MemberCache.artifact_id(key), io.BytesIO(_v2(e := entry())))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same(cache.get(key), e)
    assert stored(store, key).read_bytes().startswith(b"enstune-member/3 key=" + key.encode())
    assert same(cache.get(key), e)


def test_a_damaged_entry_of_the_previous_format_is_a_miss(store):
    cache, key = MemberCache(store), content_key(test="v2-damaged")
    data = bytearray(_v2(entry()))
    data[len(data) // 2] ^= 0xFF
    store.write(MemberCache.artifact_id(key), io.BytesIO(bytes(data)))
    assert len(misses(cache, key)) == 1
