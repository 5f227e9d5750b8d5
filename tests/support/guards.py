"""Test doubles that fail loudly when something is used that must not be."""
from __future__ import annotations


class MustNotLoad:
    """A lazy LM loader that fails the test if anything calls it (extraction and abstention never load the LM)."""

    def __call__(self):
        raise AssertionError("the LM was loaded")
