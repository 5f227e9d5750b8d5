"""Helpers for reading MCP tool results in tests."""
from __future__ import annotations


def text_of(res) -> str:
    """The text blocks of a CallToolResult, joined: what an error message says."""
    return " ".join(getattr(b, "text", "") for b in res.content)
