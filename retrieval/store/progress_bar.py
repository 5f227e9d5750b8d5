"""Indexing progress: tqdm on stderr when wanted, plus the caller's progress callback (MCP progress)."""
from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[int, int, str], None]  # (done, total, stage)


class Bar:
    """tqdm on stderr (files/s, chunks/s) when wanted, plus the caller's progress callback."""

    def __init__(self, show: bool, progress: Progress | None) -> None:
        self.show, self.progress, self.bar = show, progress, None

    def stage(self, desc: str, total: int | None, unit: str) -> None:
        self.close()
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
        self.desc, self.total, self.done = desc, total, 0

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        if self.progress is not None:
            self.progress(self.done, self.total or 0, self.desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
