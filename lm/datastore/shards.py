"""Sharded search: N Ray actors each hold one contiguous id range of the token datastore's index.

A query batch fans out to every shard; the per-shard top-k lists merge with faiss.ResultHeap. The
merge is exact: a shard's index is the datastore's own trained index (same coarse quantizer, same
PQ codes: only the inverted lists are split) or a Flat index of its keys, so the global top-k is
the top-k of the union of the shards' top-k lists, which is what one index returns at the same
nprobe; an on-disk index (lm.datastore.ondisk) is mapped whole by every shard, which searches
only its own id range (an IDSelectorRange: the same top-k). The exact re-rank follows
token_index.search: merge the approximate top R*k first, then every shard scores the candidates
it owns, op for op like token_index.exact_distances (one process scores them in FAISS's
IndexRefine instead: the same neighbours, distances equal to float rounding).

`ShardedStore` stands in for the TokenStore inside KNNLM (count, values, snippet, search), so
eval, generate, explain and the MCP server run unchanged on shards.
"""
from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from lm.datastore.token_index import DEFAULT_NPROBE, Neighbours, search_params
from retrieval.errors import InvalidInputError
from retrieval.ray_support import kill_actors

log = logging.getLogger(__name__)
START_TIMEOUT_S = 600  # loading a shard reads its keys from disk: minutes for 100M entries


def shard_ranges(count: int, n: int) -> list[tuple[int, int]]:
    """n contiguous, balanced [lo, hi) id ranges covering 0..count (sizes differ by at most one)."""
    if n < 1:
        raise InvalidInputError(f"--shards must be >= 1, got {n}", "pass --shards 2 or more")
    if n > max(1, count):
        raise InvalidInputError(f"--shards {n} is more than the datastore's {count} entries", f"pass --shards {max(1, count)} or less")
    cuts = np.linspace(0, count, n + 1).round().astype(np.int64)  # (n+1,)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


DENSE_MAX_BYTES = 2 << 30  # a shard's keys up to 2 GB are copied to RAM (random mmap gathers cost ~10x), else gathered


def _range_batches(store, lo: int, hi: int):
    """(first id, (n, dim) float32 keys) of entries lo..hi-1, datastore file by file (bounded memory)."""
    for a, xb in store.iter_keys(lo):
        if a >= hi:
            break
        yield a, xb[: hi - a]


class ShardSearcher:
    """One shard: the id range [lo, hi) of the datastore at `path` (the body of a Ray actor)."""

    def __init__(self, path: str, lo: int, hi: int, threads: int = 1) -> None:
        import faiss

        from lm.datastore.token_store import TokenStore

        faiss.omp_set_num_threads(max(1, threads))
        self.store = TokenStore.open(path)
        self.lo, self.hi, self.dim = lo, hi, self.store.dim
        self.dense: np.ndarray | None = None  # (n, dim) fp16 in RAM when small enough
        if (hi - lo) * self.dim * 2 <= DENSE_MAX_BYTES:
            self.dense = np.concatenate([xb.astype(np.float16) for _a, xb in _range_batches(self.store, lo, hi)])
        self._flat: Any = None
        self.ivf: Any = None
        self.sel: Any = None
        meta = self.store.manifest.get("index") or {}
        if meta.get("storage") == "ondisk":  # every shard maps the one .ivfdata and keeps to its ids: no lists in RAM
            from lm.datastore.token_index import trained_index

            self.ivf, self.sel = trained_index(self.store), faiss.IDSelectorRange(lo, hi)
        elif meta.get("file"):
            index = faiss.read_index(str(self.store._check_file(meta["file"], meta.get("bytes"))))
            index.reset()  # keep the trained quantizer and codebooks, drop the lists: this shard adds its own
            for a, xb in _range_batches(self.store, lo, hi):
                index.add_with_ids(xb, np.arange(a, a + len(xb), dtype=np.int64))
            self.ivf = index

    def _keys(self, local: np.ndarray) -> np.ndarray:
        """fp16 keys of shard-local ids, any shape: (..., dim)."""
        return self.dense[local] if self.dense is not None else self.store.keys(local + self.lo)

    def info(self) -> dict:
        import ray

        return {"lo": self.lo, "hi": self.hi, "ivf": self.ivf is not None, "node": ray.get_runtime_context().get_node_id()}

    def _flat_index(self) -> Any:
        if self._flat is None:
            import faiss

            self._flat = faiss.IndexFlatL2(self.dim)
            for _a, xb in _range_batches(self.store, self.lo, self.hi):
                self._flat.add(xb)
        return self._flat

    def search(self, xq: np.ndarray, kk: int, nprobe: int | None, exact: bool,
               dead: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) of this shard's kk nearest live entries, I as datastore entry ids (-1 = none).

        dead: the datastore's tombstoned ids (sorted), skipped by a selector inside the search as
        token_index.search does, so a deleted document never comes back from a shard either."""
        import faiss

        dead = np.asarray(dead if dead is not None else (), dtype=np.int64)
        mine = dead[(dead >= self.lo) & (dead < self.hi)]  # (t,) global ids this shard holds
        if exact or self.ivf is None:
            D, I = self._flat_index().search(xq, kk, params=search_params(mine - self.lo, None, False))  # (n, kk): local ids
            return D, np.where(I >= 0, I + self.lo, -1)
        nprobe = int(nprobe or DEFAULT_NPROBE)  # as token_index.search
        if self.sel is None:
            return self.ivf.search(xq, kk, params=search_params(mine, nprobe, True))
        params: Any = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        if len(mine):
            sel = faiss.IDSelectorAnd(self.sel, faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(mine))))
            params.sel, params._keep = sel, (sel, mine)  # selectors must outlive the call
        else:
            params.sel = self.sel
        return self.ivf.search(xq, kk, params=params)

    def exact_distances(self, xq: np.ndarray, I: np.ndarray, block: int = 16) -> np.ndarray:
        """Squared L2 to the candidates this shard owns, inf for the others: (n, kk).

        Same shapes, blocks and ops as token_index.exact_distances (the others' rows are computed on
        zeros and then masked), so the merged re-rank equals the one-index re-rank bit for bit."""
        own = (I >= self.lo) & (I < self.hi)  # (n, kk)
        local = np.where(own, I - self.lo, 0)  # (n, kk)
        De = np.empty(I.shape, dtype=np.float32)  # (n, kk)
        for a in range(0, len(xq), block):
            xb = self._keys(local[a:a + block]).astype(np.float32)  # (b, kk, dim)
            xb -= xq[a:a + block, None, :]  # (b, kk, dim)
            De[a:a + block] = np.einsum("bkd,bkd->bk", xb, xb)  # (b, kk)
        De[~own] = np.inf
        return De


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-shard (D, I) lists into the global k smallest distances: ((n, k), (n, k))."""
    import faiss

    nq = parts[0][0].shape[0]
    heap = faiss.ResultHeap(nq, k)
    for D, I in parts:
        heap.add_result(np.ascontiguousarray(D, dtype=np.float32), np.ascontiguousarray(I, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I


class ShardedStore:
    """A TokenStore whose search runs on N shard actors; values, docs and snippets stay local."""

    def __init__(self, store, actors: list, ray: Any) -> None:
        self.store = store
        self.actors = actors
        self._ray = ray
        self._finalizer = weakref.finalize(self, kill_actors, ray, list(actors))  # a CLI call that returns frees its actors
        self.has_ivf = bool((store.manifest.get("index") or {}).get("file"))

    @classmethod
    def start(cls, store, shards: int, *, address: str, cpus_per_shard: int = 1) -> ShardedStore:
        """Start one actor per id range (they load in parallel) and wait until all are ready."""
        from retrieval.errors import KnnragError
        from retrieval.ray_support import connect

        ranges = shard_ranges(store.count, shards)
        ray = connect(address, num_cpus=shards * cpus_per_shard if address == "local" else None)
        # A search actor idles between queries: on a cluster with fewer CPUs than shards each asks for a
        # fraction, so N shards always start (an unsatisfiable request would wait forever).
        per = min(float(cpus_per_shard), float(ray.cluster_resources().get("CPU", 1.0)) / shards)
        # SPREAD: one shard per node where possible, so the shards' RAM adds up across machines
        actor_cls = ray.remote(num_cpus=per, max_restarts=3, scheduling_strategy="SPREAD")(ShardSearcher)
        path = str(Path(store.path).resolve())
        actors = [actor_cls.remote(path, lo, hi, max(1, int(per))) for lo, hi in ranges]
        try:
            infos = ray.get([a.info.remote() for a in actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as e:
            for a in actors:
                ray.kill(a)
            raise KnnragError(f"{shards} shard actors did not start within {START_TIMEOUT_S} s",
                              "check `ray status` for free CPUs and that every node sees the datastore path") from e
        log.info("sharded search over %d actors: %s", len(actors), infos)
        return cls(store, actors, ray)

    # ---- what KNNLM reads from a store --------------------------------------------------------
    @property
    def count(self) -> int:
        return self.store.count

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def values(self) -> np.ndarray:
        return self.store.values

    @property
    def manifest(self) -> dict:
        return self.store.manifest

    @property
    def path(self) -> Path:
        return self.store.path

    def snippet(self, entry: int, before: int = 160, after: int = 40) -> tuple[str, str]:
        return self.store.snippet(entry, before, after)

    def provenance(self, ids: np.ndarray) -> np.ndarray:
        return self.store.provenance(ids)

    def info(self) -> dict:
        return {**self.store.info(), "search_shards": len(self.actors)}

    # ---- search -------------------------------------------------------------------------------
    def search(self, xq: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False, rerank: int = 0) -> Neighbours:
        """token_index.search, fanned out: same arguments, same neighbours."""
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}", "pass -k 1 or more")
        dead = self.store.dead  # (t,) read now: a delete since the shards started is honoured
        live = self.count - len(dead)
        if k > live:
            raise InvalidInputError(f"k={k} is larger than the datastore ({live} live entries)",
                                    f"pass -k {max(1, live)} or less, or add more text to the datastore")
        xq = np.ascontiguousarray(xq, dtype=np.float32)  # (n, dim)
        ray = self._ray
        ref, dref = ray.put(xq), ray.put(dead)
        approx = self.has_ivf and not exact
        kk = min(live, k * rerank) if (rerank and approx) else k
        D, I = merge_topk(ray.get([a.search.remote(ref, kk, nprobe, exact, dref) for a in self.actors]), kk)  # (n, kk)
        if not (rerank and approx):
            return Neighbours(D, I)
        iref = ray.put(I)
        De = np.min(np.stack(ray.get([a.exact_distances.remote(ref, iref) for a in self.actors])), axis=0)  # (n, kk)
        De[I < 0] = np.inf
        order = np.argsort(De, axis=1)[:, :k]  # (n, k)
        return Neighbours(np.take_along_axis(De, order, 1).astype(np.float32), np.take_along_axis(I, order, 1))

    def close(self) -> None:
        self._finalizer()
        self.actors = []


def shard_knnlm(knnlm, *, address: str, shards: int, cpus_per_shard: int = 1):
    """Swap a loaded KNNLM's datastore for `shards` Ray actors (same results); returns the KNNLM."""
    if knnlm.store is None:
        raise InvalidInputError("--shards needs a --datastore", "pass --datastore DIR, or drop --ray/--shards")
    if isinstance(knnlm.store, ShardedStore):
        return knnlm
    knnlm.store = ShardedStore.start(knnlm.store, shards, address=address, cpus_per_shard=cpus_per_shard)
    return knnlm
