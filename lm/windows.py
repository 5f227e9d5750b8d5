"""Strided sliding windows: every scored/stored token sees at least window - stride tokens of context.

Shared by the datastore build and perplexity so both see a token with the same kind of context.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class Window(NamedTuple):
    begin: int  # first token of the window in the document
    end: int  # one past the last token
    first_target: int  # targets first_target..end-1 are scored/stored (each predicted from its prefix)


def plan_windows(n_tokens: int, window: int, stride: int) -> Iterator[Window]:
    """HF-style strided windows over n_tokens; targets 1..n-1 each appear exactly once."""
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got {window}, {stride}")
    prev_end = 1  # token 0 has no prediction
    begin = 0
    while prev_end < n_tokens:
        end = min(begin + window, n_tokens)
        yield Window(begin, end, prev_end)
        prev_end = end
        begin = min(begin + stride, max(0, n_tokens - window))  # the last window ends at the text's end
        begin = min(begin, end - 1)  # the first new target needs its predecessor in the window


def default_window(max_length: int, window: int | None = None) -> int:
    """Cap at 1024: longer windows cost more attention than they gain for a CPU build."""
    return int(window or min(max_length, 1024))
