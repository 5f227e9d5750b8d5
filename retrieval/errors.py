"""Layered errors: the library raises these, the CLI and MCP server turn them into one clear message.

Every error carries the problem *and* the fix, so a user never has to read a traceback.
"""
from __future__ import annotations


class KnnragError(Exception):
    """Base of every error we raise on purpose. `hint` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidInputError(KnnragError):
    """Bad arguments: empty query, k out of range, lambda outside [0, 1], missing path..."""


class NotFoundError(KnnragError):
    """An unknown collection, chunk id, store or datastore."""


class MismatchError(KnnragError):
    """A store or datastore built with another embedder, LM or tokenizer."""


class CorruptStoreError(KnnragError):
    """A truncated, corrupt or foreign file where our artefact should be."""


class StoreWriteError(KnnragError):
    """The store cannot be written (read-only directory, disk full, lock held)."""


class ModelLoadError(KnnragError):
    """A model id or path that cannot be loaded offline."""
