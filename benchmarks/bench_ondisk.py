"""On-disk IVF-PQ (`datastore build --ondisk`) against the in-RAM indexes, same keys, same run.

Keys: --entries synthetic 576-d fp16 keys (SmolLM2's key size), a Gaussian mixture of --clusters
centres with unit noise, so IVF lists mean something (pure noise has no neighbours to find);
queries are fresh draws from the same mixture, --queries of them (one window's positions), k=64.
Three indexes over the same datastore keys, each built by TokenStore.build_index with --cores
FAISS threads:
  ram-fs     the default for large stores: IVF<n>,PQ288x4fs in RAM (fast-scan, 4-bit codes)
  ram-pq64   IVF<n>,PQ64 in RAM: the on-disk codes, kept in RAM (separates storage from code type)
  ondisk     IVF<n>,PQ64 trained once, added in --parts parts, merged into one mmap'ed .ivfdata
Reported: index build seconds (training + adding (+ merging)), search ms/token at nprobe 32 with
and without the exact re-rank (rerank 2, the kNN-LM default), recall@64 against Flat over the same
keys, and the resident memory of a fresh process that loaded the index and ran one search batch
without the re-rank (RssAnon = private RAM, RssFile = mapped file pages the kernel may drop).
Timings on a shared machine are noisy: compare within one run (ratios to ram-fs).

  nice python -m benchmarks ondisk --entries 200000 --json .bench/ondisk.json
  python -m benchmarks ondisk --quick      (4,000 keys, 50 clusters, IVF8 with fewer PQ codes, 64 queries, 2 reps)
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import median_ms, record, subprocess_env

PEER = "the in-RAM default index (IVF<n>,PQ288x4fs, fast-scan) over the same keys"
DIM = 576


def out(msg: str) -> None:
    print(msg, flush=True)


def mixture(n: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(clusters, DIM)).astype(np.float32)  # (c, d): the same for keys and queries
    r = np.random.default_rng(seed)
    x = np.empty((n, DIM), dtype=np.float16)  # (n, d): fp16 as stored, so 1M keys cost 1.15 GB here
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        x[a:b] = centres[r.integers(0, clusters, b - a)] + r.normal(size=(b - a, DIM)).astype(np.float32)
    return x


def make_store(path: Path, keys: np.ndarray, storage: str):
    from lm.datastore.token_store import TokenStore

    st = TokenStore.create(path, lm_id="bench@0", tokenizer_hash="t", key_layer="k", dim=DIM, index_storage=storage)
    st.stage_docs([{"doc": 0, "source": "synthetic", "hash": "h", "text": "x"}])
    for a in range(0, len(keys), 8192):  # the build's shard size
        m = min(8192, len(keys) - a)
        st.stage_shard(keys[a:a + m], np.zeros(m, np.int32), np.zeros((m, 3), np.int64))
    st.commit()
    return st


def rss_child(path: str, xq_file: str, nprobe: int) -> dict:
    """In a fresh process: memory after opening the store, after loading the index, after one search."""
    from lm.datastore.token_store import TokenStore

    def mem() -> dict:
        f = {k: int(v.split()[0]) // 1024 for k, v in (line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
             if k in ("VmRSS", "RssAnon", "RssFile")}
        return {"rss_mb": f["VmRSS"], "anon_mb": f["RssAnon"], "file_mb": f["RssFile"]}

    st = TokenStore.open(path)
    opened = mem()
    st._trained_index()
    loaded = mem()
    st.search(np.load(xq_file), 64, nprobe=nprobe)
    return {"opened": opened, "loaded": loaded, "searched": mem()}


def recall(I: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(I, ref)]))


def run(args) -> dict:
    import faiss

    from lm.datastore.token_index import resolve_factory

    faiss.omp_set_num_threads(args.cores)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ondisk-", dir=args.tmp))
    keys, xq = mixture(args.entries, args.clusters, 1), mixture(args.queries, args.clusters, 2).astype(np.float32)
    np.save(tmp / "xq.npy", xq)
    exact = faiss.IndexFlatL2(DIM)
    for a in range(0, len(keys), 65536):
        exact.add(keys[a:a + 65536].astype(np.float32))
    ref = exact.search(xq, 64)[1]  # (q, 64) true neighbours of the stored fp16 keys
    del exact
    fs = resolve_factory("auto", args.entries, DIM)
    pq = resolve_factory("auto", args.entries, DIM, ondisk=True)
    if args.quick:  # "auto" is Flat below 100k entries: the same index kinds, with fewer lists and sub-quantizers
        fs, pq = "IVF8,PQ48x4fs", "IVF8,PQ16"
    res: dict = {"entries": args.entries, "queries": args.queries, "cores": args.cores, "factories": {"ram-fs": fs, "ondisk": pq}}
    part = max(1, -(-args.entries // args.parts))
    for name, storage, factory in (("ram-fs", "ram", fs), ("ram-pq64", "ram", pq), ("ondisk", "ondisk", pq)):
        st = make_store(tmp / name, keys, storage)
        t0 = time.perf_counter()
        entry = st.build_index(factory, **({"part_entries": part} if storage == "ondisk" else {}))
        build_s = time.perf_counter() - t0
        st = type(st).open(st.path)
        r = {"factory": factory, "build_s": round(build_s, 2), "index_bytes": entry["bytes"] + entry.get("ivfdata_bytes", 0)}
        if storage == "ondisk":
            r.update(parts=entry["parts"], add_s=entry["add_seconds"], merge_s=entry["merge_seconds"])
        for tag, kw in (("", {}), ("_rerank", {"rerank": 2})):
            hits = st.search(xq, 64, nprobe=args.nprobe, **kw).I
            r[f"recall{tag}"] = round(recall(hits, ref), 3)
            r[f"ms_per_token{tag}"] = round(median_ms(lambda s=st, kw=kw: s.search(xq, 64, nprobe=args.nprobe, **kw), args.reps)
                                            / args.queries, 4)
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_ondisk", "--child", str(st.path), str(tmp / "xq.npy"),
                                str(args.nprobe)], capture_output=True, text=True, check=True, env=subprocess_env())
        r["memory"] = json.loads(child.stdout.strip().splitlines()[-1])
        res[name] = r
        m = r["memory"]
        out(f"{name:9s} {factory:18s} build {r['build_s']:7.1f} s  {r['ms_per_token']:.4f} ms/token recall@64 {r['recall']:.3f}  "
            f"rerank {r['ms_per_token_rerank']:.4f} ms/token recall {r['recall_rerank']:.3f}  "
            f"index RAM +{m['loaded']['anon_mb'] - m['opened']['anon_mb']} MB anon, "
            f"after search +{m['searched']['anon_mb'] - m['opened']['anon_mb']} MB anon / "
            f"+{m['searched']['file_mb'] - m['opened']['file_mb']} MB file")
    base = res["ram-fs"]
    for name in ("ram-pq64", "ondisk"):
        r = res[name]
        r["ratios_to_ram_fs"] = {k: round(r[k] / max(base[k], 1e-9), 2) for k in ("build_s", "ms_per_token", "ms_per_token_rerank")}
        out(f"{name} / ram-fs: {r['ratios_to_ram_fs']}")
    return res


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        print(json.dumps(rss_child(argv[1], argv[2], int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=768)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--parts", type=int, default=4, help="on-disk parts (each a copy of the trained index, merged)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tmp", default=None, help="folder for the datastores (default: the system temp)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="4,000 keys, 50 clusters, IVF8 with fewer PQ codes, 64 queries, 2 reps")
    args = ap.parse_args(argv)
    if args.quick:
        args.entries, args.clusters, args.queries, args.reps = 4000, 50, 64, 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    res = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    base, disk = res["ram-fs"], res["ondisk"]
    extra = {"entries": args.entries, "factory": disk["factory"], "recall_rerank": disk["recall_rerank"],
             "peer_recall_rerank": base["recall_rerank"], "memory": disk["memory"]}
    record("ondisk", f"on-disk IVF-PQ search ms/token with re-rank, {args.entries:,} keys", disk["ms_per_token_rerank"],
           base["ms_per_token_rerank"], "ms/token", peer_name="in-RAM IVF-PQ fast-scan", higher_is_better=False,
           extra=extra, quick=args.quick)
    record("ondisk", f"on-disk IVF-PQ index build seconds, {args.entries:,} keys", disk["build_s"], base["build_s"], "s",
           peer_name="in-RAM IVF-PQ fast-scan", higher_is_better=False, extra=extra, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
