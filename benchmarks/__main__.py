"""`python -m benchmarks NAME [--quick] [ARGS]` runs one benchmark; `--list` names them with their peers;
`python -m benchmarks report` regenerates BENCHMARKS.md from benchmarks/results/.

A benchmark is any module `benchmarks/bench_NAME.py` with `PEER` and `main(argv)`: it is found by its
file name, so adding one needs no registration here.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from benchmarks import common

USAGE = ("usage: python -m benchmarks NAME [--quick] [ARGS...]   run one benchmark (NAME -h for its options)\n"
         "       python -m benchmarks --list                     the benchmarks and their peers\n"
         "       python -m benchmarks report [--check]           regenerate BENCHMARKS.md from benchmarks/results/")


def names() -> list[str]:
    """Every `bench_NAME.py` beside this file, as NAME, sorted."""
    return sorted(p.stem[len("bench_"):] for p in (common.ROOT / "benchmarks").glob("bench_*.py"))


def load(name: str) -> ModuleType:
    name = name.removeprefix("bench_").removesuffix(".py")
    if name not in names():
        raise SystemExit(f"no benchmark {name!r}; `python -m benchmarks --list` names them: {', '.join(names())}")
    return importlib.import_module(f"benchmarks.bench_{name}")


def first_line(mod: ModuleType) -> str:
    return (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""


def listing() -> str:
    rows = []
    for n in names():
        mod = load(n)
        rows.append(f"{n:18s} peer: {mod.PEER}\n{'':18s} {first_line(mod)}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--list":
        print(listing())
        return 0
    if args[0] == "report":
        from benchmarks import report

        return report.main(args[1:])
    mod = load(args[0])
    common.INVOCATION = [args[0].removeprefix("bench_"), *args[1:]]
    return int(mod.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
