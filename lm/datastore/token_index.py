"""The token datastore's FAISS side: index choice, training, batched search and exact re-ranking.

Free functions over a TokenStore (`store`), so the store class keeps only files and arrays. Names
follow FAISS: xq (n, dim) queries, D distances, I entry ids.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import CorruptStoreError, InvalidInputError

log = logging.getLogger(__name__)

FLAT_MAX = 100_000  # below this "auto" keeps exact search: Flat costs < ~10% of the LM time here
# Large stores: 4-bit fast-scan PQ with 2 dimensions per sub-quantizer. On 1M SmolLM2 keys at
# nprobe 32 it finds 82% of the exact top-64 in 0.11 ms/query, against 75% in 0.76 ms for 8-bit
# PQ64 (BENCHMARKS.md); dimensions that do not split that way fall back to PQ64.
LARGE_FACTORY = "IVF{nlist},PQ{m}x4fs"
FALLBACK_FACTORY = "IVF{nlist},PQ64"
DEFAULT_NPROBE = 32
# k-means needs points per list: FAISS warns below 39, and "auto" gives 1M entries 4096 lists,
# which a fixed 100k-key training sample would leave at 24 each
TRAIN_PER_LIST = 40
DENSE_MAX_BYTES = 2 << 30  # fp16 keys up to this size are re-ranked from one in-RAM copy
_FIX = "rebuild it with `knnrag datastore build ... --out DIR` (the corpus files are not modified)"


class Neighbours(NamedTuple):
    D: np.ndarray  # (n, k) float32 squared L2 distances, ascending
    I: np.ndarray  # (n, k) int64 entry ids (-1 = none)


def resolve_factory(factory: str, count: int, dim: int = 576, ondisk: bool = False) -> str:
    """auto: exact Flat while small, else IVF with ~4*sqrt(N) lists (a power of two) and fast-scan PQ
    codes; on disk (ondisk=True) 8-bit PQ codes, since fast-scan lists cannot live on disk."""
    if factory in ("auto", "", None):
        if count < FLAT_MAX:
            return "Flat"
        nlist = int(min(16384, max(256, 2 ** round(np.log2(4 * np.sqrt(count))))))
        if ondisk:
            from lm.datastore.ondisk import ondisk_factory

            return ondisk_factory(count, dim, nlist)
        if dim % 4 == 0:
            return LARGE_FACTORY.format(nlist=nlist, m=dim // 2)
        return FALLBACK_FACTORY.format(nlist=nlist) if dim % 64 == 0 else "Flat"
    return factory


def is_ondisk(store) -> bool:
    return store.manifest.get("index_storage", "ram") == "ondisk"


class Gatherer:
    """`store[ids]` for stores too large to hold in RAM."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        return self.store.keys(ids)



def rerank_keys(store) -> np.ndarray | Gatherer:
    """All keys as one in-RAM fp16 array when they fit in 2 GB (random gathers from many mmap
    shards cost ~10x more); otherwise the mmap-backed gather."""
    if getattr(store, "_dense", None) is not None and len(store._dense) == store.count:
        return store._dense
    if store.count * store.dim * 2 > DENSE_MAX_BYTES:
        return Gatherer(store)
    store._dense = np.concatenate([np.asarray(k) for k in store._keys]) if store._keys else np.zeros((0, store.dim), np.float16)
    return store._dense

def exact_distances(store, xq: np.ndarray, I: np.ndarray, block: int = 16) -> np.ndarray:
    """Squared L2 from each query to its candidates' fp16 keys, in query blocks.

    Why blocks: gathering all (n, kk, dim) candidates at once (226 MB per 768-token window at
    k=64, rerank 2) made the re-rank memory-bound: 2.2 ms/token on 1M keys, against 0.36 ms in
    16-query blocks, which stay in cache.
    """
    keys = rerank_keys(store)
    safe = np.where(I < 0, 0, I)  # (n, kk)
    De = np.empty(I.shape, dtype=np.float32)  # (n, kk)
    for a in range(0, len(xq), block):
        xb = keys[safe[a:a + block]].astype(np.float32)  # (b, kk, dim)
        xb -= xq[a:a + block, None, :]  # (b, kk, dim)
        De[a:a + block] = np.einsum("bkd,bkd->bk", xb, xb)  # (b, kk)
    De[I < 0] = np.inf
    return De

def refine_index(store, index: Any) -> Any | None:
    """FAISS IndexRefine over `index`, re-ranking with the fp16 keys held as a QT_fp16 scalar
    quantizer (the same fp16 values, so the same exact distances as `exact_distances`).

    Why: the numpy re-rank gathers, converts and subtracts (b, kk, dim) blocks; FAISS scores the
    same candidates in C++ straight from the fp16 codes: 0.05 vs 0.29 ms/token at k=64 x 2 on
    576-d keys (benchmarks/results/knnlm_1m.jsonl). None when the keys would not fit the in-RAM
    copy that `rerank_keys` also allows (2 GB), or the index is not a plain FAISS index (on disk).
    """
    import faiss

    nbytes = store.count * store.dim * 2
    if not isinstance(index, faiss.Index) or nbytes > DENSE_MAX_BYTES:
        return None
    cached = getattr(store, "_refine", None)
    if cached is not None and cached[0] is index and cached[1].ntotal == store.count == index.ntotal:
        return cached[1]
    if index.ntotal != store.count:
        return None
    store._refine = None
    store._dense = None  # the codes below replace the numpy copy
    sq = faiss.IndexScalarQuantizer(store.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    sq.codes.resize(nbytes)  # once: growing it shard by shard would copy it again at each doubling
    dst = faiss.rev_swig_ptr(sq.codes.data(), nbytes).view(np.float16).reshape(store.count, store.dim)  # (N, dim)
    a = 0
    for keys in store._keys:  # QT_fp16 codes are the fp16 values themselves
        dst[a:a + len(keys)] = keys
        a += len(keys)
    sq.ntotal = store.count
    refine = faiss.IndexRefine(index, sq)
    store._refine = (index, refine, sq)  # FAISS holds raw pointers: keep both alive with it
    return refine


def _refined(refine: Any, xq: np.ndarray, k: int, k_factor: float, base_params: Any) -> Neighbours:
    import faiss

    params = faiss.IndexRefineSearchParameters()
    params.k_factor = float(k_factor)
    if base_params is not None:
        params.base_index_params = base_params
    D, I = refine.search(xq, k, params=params)  # (n, k), (n, k)
    D[I < 0] = np.inf  # FAISS pads with FLT_MAX; the numpy re-rank with inf
    return Neighbours(D, I)


def flat_index(store) -> Any:
    """Exact search over the stored fp16 keys (built in memory: it would duplicate keys on disk)."""
    import faiss

    if store._flat is None or store._flat.ntotal != store.count:
        flat = faiss.IndexFlatL2(store.dim)
        for _a, xb in store.iter_keys():
            flat.add(xb)  # (n, dim) float32
        store._flat = flat
    return store._flat

def trained_index(store) -> Any:
    import faiss

    meta = store.manifest.get("index")
    if not meta or not meta.get("file"):
        return None
    if meta.get("storage") == "ondisk":
        from lm.datastore import ondisk

        if store._index is None or store._index.count != store.count:
            store._index = ondisk.load(store, meta)
        return store._index
    if store._index is None:
        f = store._check_file(meta["file"], meta.get("bytes"))
        try:
            index = faiss.read_index(str(f))
        except RuntimeError as e:
            raise CorruptStoreError(f"FAISS index {f} is corrupt: {str(e).splitlines()[0]}", _FIX) from e
        if index.d != store.dim or index.ntotal > store.count:
            raise CorruptStoreError(f"FAISS index {f} does not match the keys ({index.ntotal} vs {store.count})", _FIX)
        store._index = index
    index = store._index
    if index.ntotal < store.count:  # entries committed after the last index update
        log.info("index covers %d of %d entries; adding the rest", index.ntotal, store.count)
        for _a, xb in store.iter_keys(index.ntotal):
            index.add(xb)  # (n, dim)
    return index

def ivf_lists(index: Any) -> int:
    """Inverted lists of an IVF index (0 when it is not one)."""
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 0


def build_index(store, factory: str | None = None, *, train_size: int = 100_000, seed: int = 0, **ondisk_kw: Any) -> dict:
    """Bring the index up to date with every entry and commit it.

    A trained index of the same factory only gets the new entries added (append never
    retrains); "Flat" stores nothing on disk. Training samples `train_size` keys, and at least
    TRAIN_PER_LIST per IVF list. An on-disk datastore (index_storage "ondisk") goes through
    lm.datastore.ondisk.build (ondisk_kw: part_entries, add_parts, by_shards). Returns the
    manifest's index entry.
    """
    import faiss

    fac = resolve_factory(factory or store.manifest["index_factory"], store.count, store.dim, is_ondisk(store))
    if fac == "Flat":
        entry = {"factory": "Flat", "file": None, "ntotal": store.count}
        store.commit(index=entry)
        return entry
    if is_ondisk(store):
        from lm.datastore import ondisk

        floor = TRAIN_PER_LIST * ivf_lists(faiss.index_factory(store.dim, fac))  # as below: >= 40 keys per list
        return ondisk.build(store, fac, train_size=max(train_size, floor), seed=seed, **ondisk_kw)
    cur = store.manifest.get("index") or {}
    t0 = time.perf_counter()
    trained = None
    if cur.get("factory") == fac and cur.get("file"):
        index = trained_index(store)
        store._index = None
    else:
        index = faiss.index_factory(store.dim, fac)
        n = min(store.count, max(train_size, TRAIN_PER_LIST * ivf_lists(index)))
        try:  # factory PQ strings train polysemous codes by default: minutes of annealing we never use
            ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.do_polysemous_training = False
        except (RuntimeError, AttributeError):
            pass
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(store.count, size=n, replace=False))
        xt = store.keys(ids).astype(np.float32)  # (n, dim)
        log.info("training %s on %d keys", fac, n)
        index.train(xt)
        trained = n
        for _a, xb in store.iter_keys():
            index.add(xb)  # (b, dim)
    name = f"index-{store.manifest['generation'] + 1:06d}-{os.getpid()}.faiss"
    faiss.write_index(index, str(store.path / name))
    with open(store.path / name, "rb") as f:
        os.fsync(f.fileno())
    entry = {"factory": fac, "file": name, "ntotal": int(index.ntotal), "bytes": (store.path / name).stat().st_size,
             "seconds": round(time.perf_counter() - t0, 2), "trained_on": cur.get("trained_on") if trained is None else trained}
    store.commit(index=entry)
    store._index = index
    return entry


def search_params(dead: np.ndarray, nprobe: int | None, ivf: bool) -> Any:
    """FAISS search parameters whose selector skips tombstoned entries *inside* the search, so a
    deleted document's entries can never be among the k neighbours (filtering after the search
    would return fewer than k, or none, and leak nothing only by luck)."""
    import faiss

    if not len(dead) and not (ivf and nprobe):
        return None
    sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(dead, dtype=np.int64))) if len(dead) else None
    params: Any = faiss.SearchParametersIVF() if ivf else faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
        params._keep = sel  # the selector must outlive the call
    if ivf and nprobe:
        params.nprobe = int(nprobe)
    return params


def search(store, xq: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False, rerank: int = 0) -> Neighbours:
    """k nearest live stored keys of each query, one batched FAISS call.

    xq: (n, dim) float32. exact=True forces Flat search. rerank=R > 0 fetches R*k candidates
    from the approximate index and re-ranks them by exact distance to the fp16 keys. Tombstoned
    entries (store.dead) are excluded by an IDSelector inside the search.
    """
    import faiss

    dead = store.dead
    live = store.count - len(dead)
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}", "pass -k 1 or more")
    if k > live:
        raise InvalidInputError(f"k={k} is larger than the datastore ({live} live entries)",
                                f"pass -k {max(1, live)} or less, or add more text to the datastore")
    xq = np.ascontiguousarray(xq, dtype=np.float32)  # (n, dim)
    index = None if exact else trained_index(store)
    if index is None:
        D, I = flat_index(store).search(xq, k, params=search_params(dead, None, False))  # (n, k), (n, k)
        return Neighbours(D, I)
    try:
        faiss.extract_index_ivf(getattr(index, "main", index))  # an ondisk.OnDiskIndex wraps its IVF index
        ivf = True
    except RuntimeError:
        ivf = False  # not an IVF index
    params = search_params(dead, nprobe or (DEFAULT_NPROBE if ivf else None), ivf)
    kk = min(live, k * rerank) if rerank else k
    refine = refine_index(store, index) if rerank else None
    if refine is not None:
        return _refined(refine, xq, k, kk / k, params)
    D, I = index.search(xq, kk, params=params)  # (n, kk)
    if not rerank:
        return Neighbours(D, I)
    De = exact_distances(store, xq, I)  # (n, kk)
    order = np.argsort(De, axis=1)[:, :k]  # (n, k)
    return Neighbours(np.take_along_axis(De, order, 1).astype(np.float32), np.take_along_axis(I, order, 1))
