"""What every benchmark shares: paths, data lookup, timers, percentiles and the results writer.

A benchmark is a module `benchmarks/bench_NAME.py` with:
    PEER: str                      what it is measured against, in the same run
    def main(argv: list[str] | None = None) -> int
and it records each run with `record(...)`: one JSON line in benchmarks/results/NAME.jsonl.
Run one with `python -m benchmarks NAME [--quick]`; BENCHMARKS.md is regenerated from the results.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent          # the repository
RESULTS = ROOT / "benchmarks" / "results"             # one NAME.jsonl per benchmark, a line per run
WORK = ROOT / ".bench"                                 # stores and datastores the benchmarks build (git-ignored)


INVOCATION: list[str] | None = None                     # [NAME, *argv] of the run in progress (set by __main__)


def _shared() -> Path:
    """The `shared` folder beside the repository (or beside a worktree's parent): data and the judge's tools."""
    for d in ROOT.parents:
        if (d / "shared" / "data").is_dir():
            return d / "shared"
    return ROOT.parent / "shared"


def data_dir(name: str = "") -> Path:
    """`../shared/data/NAME` beside the repository, or $KNNRAG_BENCH_DATA/NAME."""
    env = os.environ.get("KNNRAG_BENCH_DATA")
    base = Path(env) if env else _shared() / "data"
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


def median_ms(fn: Callable[[], object], n: int, warmup: int = 1) -> float:
    """Median wall time of `n` calls of fn() after `warmup` untimed ones (first touch of mmap pages, code paths), in ms."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return median(ts)


def shared_tool(name: str) -> ModuleType:
    """Import `../shared/tools/NAME.py` (the judge's scorers, e.g. `ndcg`) by path, not through sys.path."""
    path = Path(os.environ.get("KNNRAG_BENCH_TOOLS", _shared() / "tools")) / f"{name}.py"
    if not path.is_file():
        sys.exit(f"benchmark tool {path} is missing: set KNNRAG_BENCH_TOOLS to the folder that holds {name}.py")
    spec = importlib.util.spec_from_file_location(f"shared_tools_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def knnrag_exe() -> str:
    """The `knnrag` console script of the running Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "knnrag"
    return str(here) if here.exists() else "knnrag"


def command_line(name: str) -> str:
    """How to re-run the benchmark in progress: `python -m benchmarks NAME ARGS...`."""
    parts = INVOCATION if INVOCATION is not None else [name, *sys.argv[1:]]
    return "python -m benchmarks " + " ".join(parts)


def subprocess_env() -> dict[str, str]:
    """The environment for a child Python that must import this repository's packages offline."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


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
           "command": command or command_line(name),
           "extra": extra or {}}
    results = Path(os.environ.get("KNNRAG_BENCH_RESULTS", RESULTS))  # a scratch folder for trial runs
    results.mkdir(parents=True, exist_ok=True)
    with (results / f"{name}.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return row
