"""Ray against one process at equal total cores: datastore build tokens/s and sharded search latency.

Build: the bundled SmolLM2-135M over the first --tokens entries of WikiText-2 train, one process
with --cores torch threads, then Ray (`--ray local`, a session of --cores CPUs) with 1 worker of
--cores threads and with 2 workers of --cores/2 threads. The headline is the build loop's entries
per wall second (actor start and LM load included, as a user sees it) and its ratio to one
process; the forward-only rate (actors' forward tokens per forward second, summed) separates the
start-up cost from the steady state.

Search: --entries random 576-d fp16 keys (SmolLM2's key size), a batch of --queries keys (one
window's positions) at k=64: one index with --cores FAISS threads against 2 shard actors of
--cores/2 threads, for Flat and for an IVF-PQ fast-scan index at nprobe 32 with the exact
re-rank (the kNN-LM defaults). Prints ms per token and the ratio, then extrapolates to N machines
from the measured figures. Timings on a shared machine are noisy: compare within one run.

  nice python -m benchmarks ray --tokens 6000 --entries 100000 --json .bench/ray.json
  python -m benchmarks ray --quick        (1,000 tokens, 20,000 keys, 2 reps; still starts a local Ray)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import data_dir, median_ms, record

PEER = "one process with the same total cores (torch / FAISS threads), same corpus, same keys"


def out(msg: str) -> None:
    print(msg, flush=True)


def _corpus(tmp: Path, tokens: int, data: Path) -> Path:
    text = (data / "wiki.train.tokens").read_text(encoding="utf-8")
    f = tmp / "train-part.txt"
    f.write_text(text[: tokens * 6])  # ~4.5 chars per SmolLM2 token on WikiText: enough text, capped by max_tokens
    return f


def bench_build(tmp: Path, args) -> dict:
    import torch

    from lm.datastore.build import BuildConfig, build_datastore
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray
    from lm.models import load_lm
    from retrieval.ray_support import connect

    corpus = _corpus(tmp, args.tokens, Path(args.data))
    lm = load_lm(None)
    # shards of tokens/8 entries: 8 tasks, so 2 actors both work (the default 8192 would give one task here)
    cfg = BuildConfig(max_tokens=args.tokens, calibrate=False, holdout=0.0, index_factory="Flat", shard_tokens=max(128, args.tokens // 8))
    res: dict = {}

    def one_process(tag: str, threads: int = args.cores):
        torch.set_num_threads(threads)
        one = build_datastore(lm, [str(corpus)], tmp / f"one-{tag}", cfg, progress=False)
        res[f"one_process_{tag}"] = {"tokens_per_s": one.store_tokens_per_s, "forward_tokens_per_s": one.forward_tokens_per_s,
                                     "entries": one.entries_added, "loop_seconds": one.loop_seconds}
        out(f"build one process ({threads} threads, {tag}): {one.store_tokens_per_s} tokens/s ({one.entries_added} entries, "
            f"{one.loop_seconds} s)")
        return one

    first = one_process("before")
    torch.set_num_threads(1)  # the driver only tokenizes and commits while the actors run
    connect("local", num_cpus=args.cores)
    runs = {}
    for workers in (1, 2):
        rc = RayBuildConfig("local", workers=workers, cpus_per_worker=max(1, args.cores // workers))
        runs[workers] = build_datastore_ray(lm, [str(corpus)], tmp / f"ray{workers}", cfg, rc, progress=False), rc
    # one process again after the Ray runs: the machine's load drifts, so the ratios use the mean of both
    last = one_process("after")
    one_process("1thread", 1)  # on an oversubscribed machine torch's 2-thread barriers can cost more than the 2nd core gives
    one_tps = (first.store_tokens_per_s + last.store_tokens_per_s) / 2
    one_fwd = (first.forward_tokens_per_s + last.forward_tokens_per_s) / 2
    res["one_process"] = {"tokens_per_s": round(one_tps, 1), "forward_tokens_per_s": round(one_fwd, 1)}
    for workers, (rep, rc) in runs.items():
        fwd = rep.forward_tokens / max(rep.forward_seconds / workers, 1e-9)  # actors run concurrently: seconds summed over them
        res[f"ray_{workers}"] = {"tokens_per_s": rep.store_tokens_per_s, "forward_tokens_per_s": round(fwd, 1),
                                 "entries": rep.entries_added, "loop_seconds": rep.loop_seconds,
                                 "ratio": round(rep.store_tokens_per_s / max(one_tps, 1e-9), 3),
                                 "forward_ratio": round(fwd / max(one_fwd, 1e-9), 3)}
        r = res[f"ray_{workers}"]
        out(f"build ray {workers} worker(s) x {rc.cpus_per_worker} CPU: {r['tokens_per_s']} tokens/s = {r['ratio']}x one process "
            f"(forward only {r['forward_tokens_per_s']} tokens/s = {r['forward_ratio']}x; {r['loop_seconds']} s)")
    return res


def _synthetic_store(path: Path, n: int, dim: int, factory: str):
    from lm.datastore.token_store import TokenStore

    rng = np.random.default_rng(0)
    st = TokenStore.create(path, lm_id="bench@0", tokenizer_hash="t", key_layer="k", dim=dim, index_factory=factory)
    st.stage_docs([{"doc": 0, "source": "synthetic", "hash": "h", "text": "x"}])
    for a in range(0, n, 50_000):
        m = min(50_000, n - a)
        st.stage_shard(rng.normal(size=(m, dim)).astype(np.float16), rng.integers(0, 49152, m).astype(np.int32), np.zeros((m, 3), np.int64))
        st.commit()
    st.build_index()
    return TokenStore.open(path)


def bench_search(tmp: Path, args) -> dict:
    import faiss

    from lm.datastore.shards import ShardedStore
    from retrieval.ray_support import connect

    connect("local", num_cpus=args.cores)
    xq = np.random.default_rng(1).normal(size=(args.queries, 576)).astype(np.float32)
    res = {}
    for name, factory, kw in (("flat", "Flat", {}), ("ivfpq", args.ivf, {"nprobe": 32, "rerank": 2})):
        store = _synthetic_store(tmp / f"s-{name}", args.entries, 576, factory)
        # one thread too: OpenMP threads spin when the machine is oversubscribed (a shared CI box), so 2 threads
        # can be far slower than 1 there; the shards run 1 thread each
        faiss.omp_set_num_threads(1)
        one_1t = median_ms(lambda s=store, kw=kw: s.search(xq, 64, **kw), args.reps)
        faiss.omp_set_num_threads(args.cores)
        one = median_ms(lambda s=store, kw=kw: s.search(xq, 64, **kw), args.reps)
        sh = ShardedStore.start(store, 2, address="local", cpus_per_shard=max(1, args.cores // 2))
        try:
            two = median_ms(lambda sh=sh, kw=kw: sh.search(xq, 64, **kw), args.reps)
        finally:
            sh.close()
        res[name] = {"factory": factory, "one_ms_per_token": round(one / args.queries, 4),
                     "one_1thread_ms_per_token": round(one_1t / args.queries, 4),
                     "shards2_ms_per_token": round(two / args.queries, 4), "ratio": round(two / one, 3), "ratio_vs_1thread": round(two / one_1t, 3)}
        r = res[name]
        out(f"search {factory} {args.entries} keys, {args.queries} queries, k=64: one index {r['one_ms_per_token']} ms/token "
            f"({args.cores} threads), {r['one_1thread_ms_per_token']} ms/token (1 thread); 2 shards x {max(1, args.cores // 2)} thread "
            f"{r['shards2_ms_per_token']} ms/token ({r['ratio']}x / {r['ratio_vs_1thread']}x)")
    return res


def extrapolate(b: dict, s: dict, args) -> list[str]:
    """N machines of --cores cores each, from the measured per-core build rate and the fan-out overhead."""
    lines = []
    per_core = b["ray_2"]["tokens_per_s"] / args.cores
    for n in (1, 4, 16, 64):
        tps = per_core * args.cores * n
        lines.append(f"build, {n} machine(s) x {args.cores} cores: ~{tps:,.0f} entries/s -> 1B entries in {1e9 / tps / 86400:,.1f} days")
    for r in s.values():  # what sharding added at equal cores, against the faster one-index setting
        extra = r["shards2_ms_per_token"] - min(r["one_ms_per_token"], r["one_1thread_ms_per_token"])
        lines.append(f"search {r['factory']}: 2 shards cost {extra:+.4f} ms/token against one index at equal cores "
                     f"({extra * args.queries:+.1f} ms per {args.queries}-query batch: the Ray round trips and merge)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=6000, help="datastore entries per build")
    ap.add_argument("--cores", type=int, default=2, help="total cores for each configuration")
    ap.add_argument("--entries", type=int, default=100_000, help="keys in the synthetic search store")
    ap.add_argument("--queries", type=int, default=256, help="queries per search batch (one window's positions)")
    ap.add_argument("--ivf", default="IVF512,PQ288x4fs", help="approximate index of the search benchmark")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--data", default=None, help="WikiText-2 folder (default: shared/data/wikitext-2)")
    ap.add_argument("--quick", action="store_true", help="1,000 tokens, 20,000 keys, IVF64, 2 reps")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.entries, args.ivf, args.reps = 1000, 20_000, "IVF64,PQ288x4fs", 2
    args.data = args.data or str(data_dir("wikitext-2"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_ray") as t:
        tmp = Path(t)
        b = {} if args.skip_build else bench_build(tmp, args)
        s = {} if args.skip_search else bench_search(tmp, args)
    lines = extrapolate(b, s, args) if b and s else []
    for line in lines:
        out(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "build": b, "search": s, "extrapolation": lines}, indent=1))
    _record(b, s, args)
    return 0


def _record(b: dict, s: dict, args) -> None:
    one = b.get("one_process", {})
    for workers in (1, 2):
        r = b.get(f"ray_{workers}")
        if r:
            record("ray", f"datastore build entries/s, Ray {workers} x {max(1, args.cores // workers)} CPU "
                   f"(goal: >= 0.9x one process, {args.cores} cores)", r["tokens_per_s"], one.get("tokens_per_s"),
                   "tokens/s", peer_name="one process", goal=">= 0.9x",
                   extra={"tokens": args.tokens, "forward_ratio": r["forward_ratio"]}, quick=args.quick)
    for r in s.values():
        record("ray", f"kNN search ms/token, 2 shards vs one index ({r['factory']}, {args.entries:,} keys)",
               r["shards2_ms_per_token"], r["one_ms_per_token"], "ms/token", peer_name="one index",
               higher_is_better=False, extra={"queries": args.queries}, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
