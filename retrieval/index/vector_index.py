"""FAISS free functions for the document store: choose, build, update, save, load and search.

faiss-contrib style: numpy in, numpy out, FAISS names (xb, xq, D, I, k), index_factory strings.
Vectors are L2-normalised, so inner product is cosine similarity. Every index is wrapped in an
IndexIDMap2 keyed by the int64 chunk ids, so filters are IDSelectors on chunk ids and apply
*inside* the search (before ranking), never after it.

HNSW cannot remove vectors, so deleted chunk ids become tombstones (excluded by an IDSelectorNot
at search time) until they exceed a fraction of the index, when the store rebuilds it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np

from retrieval.errors import CorruptStoreError, InvalidInputError

log = logging.getLogger(__name__)

# faiss ships no type stubs: its indexes (faiss.Index subclasses, an IndexIDMap2 around one) are
# opaque to mypy. The alias names what a parameter holds.
FaissIndex: TypeAlias = Any


@dataclass(frozen=True)
class IndexConfig:
    """How a collection chooses its FAISS index. `factory="auto"`: exact flat below
    `hnsw_threshold` vectors (flat over 50k x 384 is ~10 ms), HNSW above it."""

    factory: str = "auto"
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nprobe: int = 16  # IVF lists visited per query (user factories only)
    exact_fallback_max: int = 5_000  # filtered HNSW search with fewer allowed ids => exact search
    rebuild_tombstone_fraction: float = 0.25

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _faiss() -> ModuleType:
    import faiss  # imported lazily: `import retrieval` stays cheap

    return faiss


def choose_factory(n: int, config: IndexConfig) -> str:
    """The index_factory string for a collection of n vectors."""
    if config.factory and config.factory != "auto":
        return config.factory
    return f"HNSW{config.hnsw_m},Flat" if n >= config.hnsw_threshold else "Flat"


def validate_factory(factory: str, dim: int) -> None:
    """Fail early, with a clear message, on a factory string FAISS does not understand."""
    if factory == "auto":
        return
    faiss = _faiss()
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InvalidInputError(
            f"invalid FAISS index factory string {factory!r}: {str(e).splitlines()[-1][:200]}",
            "use e.g. 'Flat', 'HNSW32,Flat', 'IVF256,Flat' or 'auto'",
        ) from None


def _inner(index: FaissIndex) -> FaissIndex:
    faiss = _faiss()
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def is_hnsw(index: FaissIndex) -> bool:
    return isinstance(_inner(index), _faiss().IndexHNSW)


def is_ivf(index: FaissIndex) -> bool:
    return isinstance(_inner(index), _faiss().IndexIVF)


def supports_remove(index: FaissIndex) -> bool:
    return not is_hnsw(index)


def build_index(xb: np.ndarray, ids: np.ndarray, factory: str, config: IndexConfig) -> FaissIndex:
    """A fresh IndexIDMap2 over `factory`, trained if needed, holding xb under ids."""
    faiss = _faiss()
    n, d = xb.shape  # (N, D)
    inner = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = config.ef_construction
    if not inner.is_trained:
        if n == 0:
            inner = faiss.index_factory(d, "Flat", faiss.METRIC_INNER_PRODUCT)
        else:
            try:
                inner.train(np.ascontiguousarray(xb, dtype=np.float32))
            except RuntimeError as e:
                raise InvalidInputError(
                    f"cannot train FAISS index {factory!r} on {n} vectors: {str(e).splitlines()[-1][:200]}",
                    "use a smaller IVF list count, or --index-factory auto until the collection is larger",
                ) from None
    index = faiss.IndexIDMap2(inner)
    add_vectors(index, xb, ids)
    return index


def add_vectors(index: FaissIndex, xb: np.ndarray, ids: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))  # (N, D), (N,)


def remove_vectors(index: FaissIndex, ids: np.ndarray) -> int:
    faiss = _faiss()
    if not len(ids):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def index_ids(index: FaissIndex) -> np.ndarray:
    """The chunk ids an IndexIDMap2 holds, in insertion order."""
    faiss = _faiss()
    return faiss.vector_to_array(index.id_map).astype(np.int64)  # (N,)


def write_index(index: FaissIndex, path: Path) -> None:
    _faiss().write_index(index, str(path))


def read_index(path: Path, *, mmap: bool = True) -> FaissIndex:
    """Read an index; the flat codes stay memory-mapped when FAISS supports it, so opening is cheap."""
    faiss = _faiss()
    try:
        if mmap:
            flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) or faiss.IO_FLAG_MMAP
            try:
                return faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                log.debug("mmap read of %s not supported, reading into memory", path)
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise CorruptStoreError(
            f"cannot read FAISS index {path}: {str(e).splitlines()[-1][:200]}",
            "the store is damaged; delete the collection and re-index, or restore a backup",
        ) from None


def copy_index(index: FaissIndex) -> FaissIndex:
    """A writable in-memory copy (the loaded index may be memory-mapped read-only)."""
    return _faiss().clone_index(index)


def _params(index: FaissIndex, sel: Any, k: int, config: IndexConfig) -> Any:
    faiss = _faiss()
    if is_hnsw(index):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=max(config.ef_search, k))
    if is_ivf(index):
        return faiss.SearchParametersIVF(sel=sel, nprobe=config.nprobe)
    return faiss.SearchParameters(sel=sel)


def search(
    index: FaissIndex | None,
    xq: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
    config: IndexConfig = IndexConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product among `allowed` ids (all when None) minus `excluded` (tombstones).

    Returns D (nq, k) float32 and I (nq, k) int64 chunk ids, -1 padded when fewer exist.
    """
    faiss = _faiss()
    xq = np.ascontiguousarray(np.atleast_2d(xq), dtype=np.float32)  # (nq, D)
    nq = xq.shape[0]
    if index is None or index.ntotal == 0 or k <= 0:
        return np.full((nq, max(k, 0)), -np.inf, np.float32), np.full((nq, max(k, 0)), -1, np.int64)
    sel = None
    keep: list[Any] = []  # the selectors hold pointers into these arrays
    if allowed is not None:
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        keep.append(allowed)
        sel = faiss.IDSelectorBatch(allowed)
    elif excluded is not None and len(excluded):
        excluded = np.ascontiguousarray(excluded, dtype=np.int64)
        keep.append(excluded)
        inner_sel = faiss.IDSelectorBatch(excluded)
        keep.append(inner_sel)
        sel = faiss.IDSelectorNot(inner_sel)
    keep.append(sel)
    params = _params(index, sel, k, config) if (sel is not None or is_hnsw(index) or is_ivf(index)) else None
    with omp_threads(1 if nq <= 4 else None):
        D, I = index.search(xq, k, params=params)  # (nq, k), (nq, k)
    return D, I


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run FAISS with n OpenMP threads. One query is faster on one thread: waking a team costs
    more than it saves, and on a busy machine (measured here, load 9 on 2 cores) a 400-vector
    flat search took 20 ms with 2 threads and 0.07 ms with 1."""
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    if before == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def exact_search(xq: np.ndarray, xb: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by one BLAS product: filtered HNSW fallback, candidate rescoring, and the
    one-query scan of a flat view (FAISS's one-query flat scan took 0.8 ms over 10k x 384 here,
    this 0.2-0.5 ms)."""
    xq = np.atleast_2d(xq).astype(np.float32)  # (nq, D)
    nq = xq.shape[0]
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    if len(ids) == 0:
        return D, I
    S = xq @ xb.T  # (nq, n)
    kk = min(k, S.shape[1])
    top = np.argpartition(-S, kk - 1, axis=1)[:, :kk]  # (nq, kk)
    for q in range(nq):
        order = top[q][np.argsort(-S[q, top[q]], kind="stable")]
        D[q, :kk] = S[q, order]
        I[q, :kk] = ids[order]
    return D, I


def flat_view(index: FaissIndex) -> tuple[np.ndarray, np.ndarray] | None:
    """(xb (N, D) the stored vectors, ids (N,)) of an IndexIDMap over an exact inner-product
    IndexFlat; None for any other index. xb is a view when aligned: it lives as long as `index`."""
    faiss = _faiss()
    inner = _inner(index)
    if not isinstance(inner, faiss.IndexFlat) or inner.metric_type != faiss.METRIC_INNER_PRODUCT or index.ntotal == 0:
        return None
    n, d = index.ntotal, inner.d
    xb = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)  # (N, D) float32, no copy
    if not xb.flags.aligned:
        # a memory-mapped index file puts the codes at an odd offset; numpy then copies the whole
        # matrix on every product (2.6 ms vs 0.2 ms over 10k x 384), so keep one aligned copy
        xb = np.array(xb)  # (N, D)
    return xb, index_ids(index)


def recall_at_k(I_approx: np.ndarray, I_exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids the approximate search found (benchmarks, tests)."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(I_approx, I_exact)]
    return float(np.mean(hits)) if hits else 1.0
