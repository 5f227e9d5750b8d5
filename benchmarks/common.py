"""What every benchmark shares: paths, data lookup, timers, percentiles and the results writer.

A benchmark is a module `benchmarks/bench_NAME.py` with:
    PEER: str                      what it is measured against, in the same run
    def main(argv: list[str] | None = None) -> int
and it records each run with `record(...)`: one JSON line in benchmarks/results/NAME.jsonl.
Run one with `python -m benchmarks NAME [--quick]`; BENCHMARKS.md is regenerated from the results.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent          # the repository
RESULTS = ROOT / "benchmarks" / "results"             # one NAME.jsonl per benchmark, a line per run
WORK = ROOT / ".bench"                                 # stores and datastores the benchmarks build (git-ignored)


def data_dir(name: str = "") -> Path:
    """`../shared/data/NAME` beside the repository, or $KNNRAG_BENCH_DATA/NAME."""
    base = Path(os.environ.get("KNNRAG_BENCH_DATA", ROOT.parent / "shared" / "data"))
    path = base / name if name else base
    if not path.exists():
        sys.exit(f"benchmark data {path} is missing: set KNNRAG_BENCH_DATA to the folder that holds {name or 'the data sets'}")
    return path


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default."""
    if not xs:
        raise ValueError("percentile of an empty sequence")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


@contextmanager
def timer() -> Iterator[list[float]]:
    """`with timer() as t: ...` then t[0] is the elapsed wall time in seconds."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - t0)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def record(name: str, target: str, ours: float, peer: float | None, unit: str, *, peer_name: str = "",
           higher_is_better: bool = True, goal: str = "", extra: dict | None = None,
           command: str | None = None, quick: bool = False) -> dict:
    """Append one run's figure for one target to benchmarks/results/NAME.jsonl and return the row.

    `ratio` is ours / peer (both measured in this run); `goal` states the target in words (">= 10x").
    """
    row = {"benchmark": name, "target": target, "ours": ours, "peer": peer, "peer_name": peer_name,
           "ratio": (ours / peer) if peer else None, "unit": unit, "higher_is_better": higher_is_better,
           "goal": goal, "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": _commit(),
           "machine": machine(), "quick": quick,
           "command": command or "python -m benchmarks " + " ".join([name, *sys.argv[1:]]),
           "extra": extra or {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{name}.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return row
