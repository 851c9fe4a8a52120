"""Shared fixtures: every test gets its own runs directory; nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh ENSTUNE_HOME and no ENSTUNE_STORAGE from the environment."""
    monkeypatch.setenv("ENSTUNE_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("ENSTUNE_STORAGE", raising=False)
    return tmp_path / "runs"

