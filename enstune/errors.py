"""Errors that the CLI turns into one line on stderr and a non-zero exit."""

from __future__ import annotations


class EnstuneError(Exception):
    """A user-facing error: bad input, missing data, unreachable storage."""


class ConfigError(EnstuneError):
    """A template, override or spec that does not describe a valid study."""


class DivergedError(EnstuneError):
    """Training produced a non-finite loss."""


class Deferred(Exception):
    """Another worker is training this member now: a scheduler may do other work first."""
