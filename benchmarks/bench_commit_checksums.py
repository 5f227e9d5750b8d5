"""What recording checksums costs a commit: the same small commits with and without them
(the hashing runs while the generation files are fsync'ed, so it mostly hides behind the I/O).

usage: python -m benchmarks commit_checksums [--chunks 20000] [--dim 384] [--commits 5] [--quick]

A collection of --chunks random vectors (hash embedder, Flat index: every commit rewrites the
whole index, the worst case for hashing) takes --commits commits of 5 texts each, alternating
with checksums on and off (store.verify.record replaced by a no-op) so noise hits both alike.
Prints median commit seconds of each side and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import record

PEER = "the same commits with checksum recording replaced by a no-op, alternating"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--commits", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2,000 chunks, 3 commits per side")
    args = ap.parse_args(argv)
    if args.quick:
        args.chunks, args.commits = 2000, 3
    from retrieval.store import collection
    from retrieval.store.docstore import DocStore

    real = collection.checksums
    times: dict[str, list[float]] = {"with checksums": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp, DocStore.open(Path(tmp) / "s", embedder=f"hash-{args.dim}") as store:
        for lo in range(0, args.chunks, 5000):
            store.add_texts([f"text {i} about rivers and mountains" for i in range(lo, min(args.chunks, lo + 5000))])
        for n in range(2 * args.commits):
            side = "with checksums" if n % 2 == 0 else "without"
            collection.checksums = real if side == "with checksums" else (lambda folder, skip=frozenset(): {})
            t0 = time.perf_counter()
            store.add_texts([f"new text {n} {j}" for j in range(5)])
            times[side].append(time.perf_counter() - t0)
        collection.checksums = real
        size = sum(p.stat().st_size for p in (Path(tmp) / "s" / "default").glob("gen-*/**/*") if p.is_file())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.chunks} chunks x {args.dim} dims, generation files {size / 1e6:.1f} MB, {args.commits} commits per side")
    for k, v in med.items():
        print(f"  {k:15s} median commit {v * 1000:.0f} ms")
    print(f"  ratio with/without: {med['with checksums'] / med['without']:.2f}x")
    record("commit_checksums", "commit time with checksums (goal: ~1.0x without)", med["with checksums"] * 1000,
           med["without"] * 1000, "ms", peer_name="no checksums", higher_is_better=False, goal="<= 1.05x",
           extra={"chunks": args.chunks, "dim": args.dim, "commits": args.commits}, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
