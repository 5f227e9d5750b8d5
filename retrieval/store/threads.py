"""Thread limits for small jobs (one query, a few changed chunks)."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class BlasThreads:
    """Run small jobs (one query, a few changed chunks) on n BLAS/OpenMP threads. Measured on a
    shared 2-core box: a query's numpy-BERT embedding took 28 ms on one BLAS thread and 1.8 s on the
    default two; torch embedding 4 chunks took 0.55 s on one thread and 1.2-1.6 s on two. Waking a
    thread team costs more than it saves on tiny work, and much more on a busy machine. Uses
    threadpoolctl when installed; otherwise runs as is."""

    def __init__(self) -> None:
        self._blas: Any = None

    @contextmanager
    def limit(self, n: int) -> Iterator[None]:
        if self._blas is None or (self._blas and self._blas[0] != len(sys.modules)):  # new libraries (torch) loaded since
            try:
                from threadpoolctl import ThreadpoolController

                self._blas = (len(sys.modules), ThreadpoolController())
            except Exception:  # not installed, or nothing to control
                self._blas = False
        if not self._blas:
            yield
            return
        with self._blas[1].limit(limits=n):
            yield
