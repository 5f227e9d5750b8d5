"""The kNN-LM token datastore: (context key -> next token) pairs in a self-describing folder.

DIR/manifest.json        format, LM id + weights hash, tokenizer hash, key layer, dim, dtype, count,
                         metric, index factory, the shard and index files (with sizes), build state
DIR/keys-*.npy           (n, dim) float16, opened with mmap      } append-only shards
DIR/values-*.npy         (n,) int32 next-token ids               }
DIR/prov-*.npy           (n, 3) int64: doc index, token position, char offset of the value token
DIR/docs-*.jsonl         one {"doc", "source", "hash", "text"} per stored document (for snippets)
DIR/index-<gen>.faiss    trained FAISS index (IVF-PQ...); a Flat index is rebuilt from the keys

Commit = new files under fresh names, fsync, then os.replace(manifest.json): a crash at any point
leaves the last committed manifest and every file it names intact. No pickle anywhere.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import CorruptStoreError, InvalidInputError, MismatchError, NotFoundError, StoreWriteError
from retrieval.store.durable import atomic_write_bytes, fsync_dir, write_bytes_synced, write_npy

log = logging.getLogger(__name__)

FORMAT = "knnrag-token-datastore"
FORMAT_VERSION = 1
FLAT_MAX = 100_000  # below this "auto" keeps exact search: Flat costs < ~10% of the LM time here
# Large stores: 4-bit fast-scan PQ with 2 dimensions per sub-quantizer. On 1M SmolLM2 keys at
# nprobe 32 it finds 82% of the exact top-64 in 0.11 ms/query, against 75% in 0.76 ms for 8-bit
# PQ64 (BENCHMARKS.md); dimensions that do not split that way fall back to PQ64.
LARGE_FACTORY = "IVF{nlist},PQ{m}x4fs"
FALLBACK_FACTORY = "IVF{nlist},PQ64"
DEFAULT_NPROBE = 32
_FIX = "rebuild it with `knnrag datastore build ... --out DIR` (the corpus files are not modified)"


class Neighbours(NamedTuple):
    D: np.ndarray  # (n, k) float32 squared L2 distances, ascending
    I: np.ndarray  # (n, k) int64 entry ids (-1 = none)


def resolve_factory(factory: str, count: int, dim: int = 576) -> str:
    """auto: exact Flat while small, else IVF with ~4*sqrt(N) lists (a power of two) and fast-scan PQ codes."""
    if factory in ("auto", "", None):
        if count < FLAT_MAX:
            return "Flat"
        nlist = int(min(16384, max(256, 2 ** round(np.log2(4 * np.sqrt(count))))))
        if dim % 4 == 0:
            return LARGE_FACTORY.format(nlist=nlist, m=dim // 2)
        return FALLBACK_FACTORY.format(nlist=nlist) if dim % 64 == 0 else "Flat"
    return factory


class _Gatherer:
    """`store[ids]` for stores too large to hold in RAM."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        return self.store.keys(ids)


class TokenStore:
    """One datastore folder. Readers use open(); a build stages shards and then commit()s."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self._keys: list[np.ndarray] = []
        self._prov: list[np.ndarray] = []
        self._offsets = np.zeros(1, dtype=np.int64)
        self.values = np.zeros(0, dtype=np.int32)
        self._index: Any = None
        self._flat: Any = None
        self._docs: list[dict] | None = None
        self._staged: list[dict] = []
        self._staged_docs: list[str] = []
        self._load_arrays()

    # ---- create / open -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, lm_id: str, tokenizer_hash: str, key_layer: str, dim: int,
               index_factory: str = "auto", lm_spec: str | None = None) -> TokenStore:
        p = Path(path)
        if (p / "manifest.json").exists():
            raise InvalidInputError(f"{p} already holds a datastore", "open it to append, or choose a new --out")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreWriteError(f"cannot create {p}: {e.strerror}", "choose a writable --out folder") from e
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "lm_id": lm_id, "tokenizer_hash": tokenizer_hash,
            "lm_spec": lm_spec, "key_layer": key_layer, "dim": int(dim), "dtype": "float16", "metric": "l2", "count": 0,
            "index_factory": index_factory, "index": None, "shards": [], "docs": [], "doc_count": 0,
            "generation": 0, "build": None, "created": time.time(),
        }
        store = cls(p, manifest)
        store.commit()
        return store

    @classmethod
    def open(cls, path: str | Path, *, lm_id: str | None = None, tokenizer_hash: str | None = None) -> TokenStore:
        p = Path(path)
        mpath = p / "manifest.json"
        if not mpath.is_file():
            raise NotFoundError(f"no kNN-LM datastore at {p} (manifest.json missing)",
                                "build one with `knnrag datastore build CORPUS... --out DIR`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptStoreError(f"{mpath} is not valid JSON: {e}", _FIX) from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptStoreError(f"{p} is not a kNN-LM token datastore", "pass the folder made by `knnrag datastore build`")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise MismatchError(f"{p} uses datastore format {manifest['format_version']}, newer than this knnrag",
                                "upgrade knnrag")
        if lm_id is not None and manifest["lm_id"] != lm_id:
            raise MismatchError(f"datastore {p} was built with LM {manifest['lm_id']}, not {lm_id}",
                                f"use --model matching {manifest['lm_id'].split('@')[0]}, or rebuild the datastore with this model")
        if tokenizer_hash is not None and manifest["tokenizer_hash"] != tokenizer_hash:
            raise MismatchError(f"datastore {p} was built with another tokenizer ({manifest['tokenizer_hash']})",
                                "use the model that built it, or rebuild the datastore")
        return cls(p, manifest)

    def _check_file(self, name: str, size: int | None) -> Path:
        f = self.path / name
        if not f.is_file():
            raise CorruptStoreError(f"datastore file {f} is missing", _FIX)
        if size is not None and f.stat().st_size != size:
            raise CorruptStoreError(f"datastore file {f} is truncated or altered ({f.stat().st_size} bytes, expected {size})", _FIX)
        return f

    def _load_npy(self, name: str, size: int | None, shape0: int, tail: tuple, dtype: str) -> np.ndarray:
        f = self._check_file(name, size)
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptStoreError(f"datastore file {f} is corrupt: {e}", _FIX) from e
        if arr.shape != (shape0, *tail) or arr.dtype != np.dtype(dtype):
            raise CorruptStoreError(f"datastore file {f} has shape {arr.shape} {arr.dtype}, expected {(shape0, *tail)} {dtype}", _FIX)
        return arr

    def _load_arrays(self) -> None:
        dim = self.manifest["dim"]
        keys, vals, prov, offs = [], [], [], [0]
        for sh in self.manifest["shards"]:
            n = sh["count"]
            keys.append(self._load_npy(sh["keys"], sh.get("keys_bytes"), n, (dim,), "float16"))
            vals.append(np.asarray(self._load_npy(sh["values"], sh.get("values_bytes"), n, (), "int32")))
            prov.append(self._load_npy(sh["prov"], sh.get("prov_bytes"), n, (3,), "int64"))
            offs.append(offs[-1] + n)
        if offs[-1] != self.manifest["count"]:
            raise CorruptStoreError(f"{self.path}: shards hold {offs[-1]} entries, manifest says {self.manifest['count']}", _FIX)
        self._keys, self._prov = keys, prov
        self._offsets = np.asarray(offs, dtype=np.int64)
        self.values = np.concatenate(vals) if vals else np.zeros(0, dtype=np.int32)

    # ---- properties ----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def info(self) -> dict:
        m = self.manifest
        idx = m.get("index") or {}
        return {
            "path": str(self.path), "format_version": m["format_version"], "lm_id": m["lm_id"], "lm_spec": m.get("lm_spec"),
            "tokenizer_hash": m["tokenizer_hash"], "key_layer": m["key_layer"], "dim": m["dim"], "dtype": m["dtype"],
            "count": m["count"], "metric": m["metric"], "index_factory": idx.get("factory") or resolve_factory(m["index_factory"], m["count"], m["dim"]),
            "index_ntotal": idx.get("ntotal", 0), "shards": len(m["shards"]), "documents": m.get("doc_count", 0),
            "generation": m["generation"], "build": m.get("build"),
            "bytes": sum(f.stat().st_size for f in self.path.iterdir() if f.is_file()),
        }

    # ---- entry access --------------------------------------------------------------------------
    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            raise InvalidInputError("entry id out of range", f"ids are 0..{self.count - 1}")
        shard = np.searchsorted(self._offsets, ids, side="right") - 1  # (n,)
        return shard, ids - self._offsets[shard]

    def _gather(self, arrays: list[np.ndarray], ids: np.ndarray, tail: tuple, dtype) -> np.ndarray:
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)  # (n,)
        out = np.empty((flat.size, *tail), dtype=dtype)  # (n, ...)
        shard, local = self._locate(flat)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = arrays[s][np.sort(local[sel])][np.argsort(np.argsort(local[sel]))]
        return out.reshape(*np.shape(ids), *tail)

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """Full-precision (fp16) keys of the given entries: (..., dim)."""
        return self._gather(self._keys, ids, (self.dim,), np.float16)

    def provenance(self, ids: np.ndarray) -> np.ndarray:
        """(..., 3) int64: doc index, token position of the value, char offset of the value."""
        return self._gather(self._prov, ids, (3,), np.int64)

    def _rerank_keys(self) -> np.ndarray:
        """All keys as one in-RAM fp16 array when they fit in 2 GB (random gathers from many mmap
        shards cost ~10x more); otherwise the mmap-backed gather."""
        if getattr(self, "_dense", None) is not None and len(self._dense) == self.count:
            return self._dense
        if self.count * self.dim * 2 > (2 << 30):
            return _Gatherer(self)
        self._dense = np.concatenate([np.asarray(k) for k in self._keys]) if self._keys else np.zeros((0, self.dim), np.float16)
        return self._dense

    def _exact_distances(self, xq: np.ndarray, I: np.ndarray, block: int = 16) -> np.ndarray:
        """Squared L2 from each query to its candidates' fp16 keys, in query blocks.

        Why blocks: gathering all (n, kk, dim) candidates at once (226 MB per 768-token window at
        k=64, rerank 2) made the re-rank memory-bound: 2.2 ms/token on 1M keys, against 0.36 ms in
        16-query blocks, which stay in cache.
        """
        keys = self._rerank_keys()
        safe = np.where(I < 0, 0, I)  # (n, kk)
        De = np.empty(I.shape, dtype=np.float32)  # (n, kk)
        for a in range(0, len(xq), block):
            xb = keys[safe[a:a + block]].astype(np.float32)  # (b, kk, dim)
            xb -= xq[a:a + block, None, :]  # (b, kk, dim)
            De[a:a + block] = np.einsum("bkd,bkd->bk", xb, xb)  # (b, kk)
        De[I < 0] = np.inf
        return De

    def iter_keys(self, start: int = 0, batch: int = 65536):
        """Yield (first_id, (n, dim) float32 keys) from `start`, shard by shard."""
        for s, arr in enumerate(self._keys):
            lo, hi = int(self._offsets[s]), int(self._offsets[s + 1])
            for a in range(max(lo, start), hi, batch):
                b = min(a + batch, hi)
                yield a, np.ascontiguousarray(arr[a - lo:b - lo], dtype=np.float32)  # (n, dim)

    def docs(self) -> list[dict]:
        if self._docs is None:
            docs: list[dict] = []
            for d in self.manifest["docs"]:
                f = self._check_file(d["file"], d.get("bytes"))
                try:
                    docs.extend(json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line)
                except ValueError as e:
                    raise CorruptStoreError(f"datastore file {f} is corrupt: {e}", _FIX) from e
            self._docs = docs
        return self._docs

    def snippet(self, entry: int, before: int = 160, after: int = 40) -> tuple[str, str]:
        """(source, text around the entry's value token) so users can see why a neighbour matched."""
        doc, _pos, char = (int(x) for x in self.provenance(np.asarray([entry]))[0])
        d = self.docs()[doc]
        text = d.get("text") or ""
        lo, hi = max(0, char - before), min(len(text), char + after)
        return d["source"], text[lo:hi]

    # ---- writes --------------------------------------------------------------------------------
    def _name(self, kind: str, ext: str) -> str:
        seq = len(self.manifest["shards"]) + len(self._staged) + len(self.manifest["docs"]) + len(self._staged_docs)
        return f"{kind}-{self.manifest['generation'] + 1:06d}-{seq:05d}-{os.getpid()}.{ext}"

    def stage_docs(self, records: list[dict]) -> None:
        """Stage documents (dicts with doc, source, hash, text); they become visible at commit()."""
        if not records:
            return
        name = self._name("docs", "jsonl")
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        write_bytes_synced(self.path / name, data)
        self._staged_docs.append(name)
        self._staged_doc_count = getattr(self, "_staged_doc_count", 0) + len(records)

    def stage_shard(self, keys: np.ndarray, values: np.ndarray, prov: np.ndarray) -> None:
        """Stage one append-only shard: keys (n, dim), values (n,), prov (n, 3)."""
        n = len(values)
        if keys.shape != (n, self.dim) or prov.shape != (n, 3):
            raise ValueError(f"shard shapes differ: keys {keys.shape}, values {values.shape}, prov {prov.shape}")
        k16 = keys.astype(np.float16)  # (n, dim)
        if not np.isfinite(k16).all():
            raise StoreWriteError("keys overflow float16", "use another --key-layer (a normalised activation)")
        sh: dict[str, Any] = {"count": int(n)}
        for kind, arr in (("keys", k16), ("values", values.astype(np.int32)), ("prov", prov.astype(np.int64))):
            name = self._name(kind, "npy")
            write_npy(self.path / name, arr)
            sh[kind], sh[f"{kind}_bytes"] = name, (self.path / name).stat().st_size
        self._staged.append(sh)

    def commit(self, *, build: dict | None | str = "keep", index: dict | None | str = "keep") -> None:
        """Publish staged shards/docs (and a new index entry) by atomically replacing manifest.json."""
        m = dict(self.manifest)
        m["shards"] = m["shards"] + self._staged
        m["docs"] = m["docs"] + [{"file": f, "bytes": (self.path / f).stat().st_size} for f in self._staged_docs]
        m["doc_count"] = m.get("doc_count", 0) + getattr(self, "_staged_doc_count", 0)
        m["count"] = m["count"] + sum(s["count"] for s in self._staged)
        m["generation"] = m["generation"] + 1
        if build != "keep":
            m["build"] = build
        if index != "keep":
            m["index"] = index
        try:
            fsync_dir(self.path)  # the staged shards' names are durable before the manifest names them
        except OSError as e:
            raise StoreWriteError(f"cannot write datastore {self.path}: {e.strerror}", "check free space and permissions") from e
        atomic_write_bytes(self.path / "manifest.json", json.dumps(m, indent=1).encode())
        self.manifest = m
        self._staged, self._staged_docs, self._staged_doc_count = [], [], 0
        self._docs = None
        self._load_arrays()
        self._gc()

    def _gc(self) -> None:
        """Remove files no committed manifest names (left by an interrupted build)."""
        live = {"manifest.json"} | {s[k] for s in self.manifest["shards"] for k in ("keys", "values", "prov")}
        live |= {d["file"] for d in self.manifest["docs"]}
        if self.manifest.get("index") and self.manifest["index"].get("file"):
            live.add(self.manifest["index"]["file"])
        for f in self.path.iterdir():
            if f.is_file() and f.name not in live and f.name.split("-")[0] in ("keys", "values", "prov", "docs", "index"):
                try:
                    f.unlink()
                except OSError:
                    pass

    # ---- FAISS index ---------------------------------------------------------------------------
    def _flat_index(self) -> Any:
        """Exact search over the stored fp16 keys (built in memory: it would duplicate keys on disk)."""
        import faiss

        if self._flat is None or self._flat.ntotal != self.count:
            flat = faiss.IndexFlatL2(self.dim)
            for _a, xb in self.iter_keys():
                flat.add(xb)  # (n, dim) float32
            self._flat = flat
        return self._flat

    def _trained_index(self) -> Any:
        import faiss

        meta = self.manifest.get("index")
        if not meta or not meta.get("file"):
            return None
        if self._index is None:
            f = self._check_file(meta["file"], meta.get("bytes"))
            try:
                index = faiss.read_index(str(f))
            except RuntimeError as e:
                raise CorruptStoreError(f"FAISS index {f} is corrupt: {str(e).splitlines()[0]}", _FIX) from e
            if index.d != self.dim or index.ntotal > self.count:
                raise CorruptStoreError(f"FAISS index {f} does not match the keys ({index.ntotal} vs {self.count})", _FIX)
            self._index = index
        index = self._index
        if index.ntotal < self.count:  # entries committed after the last index update
            log.info("index covers %d of %d entries; adding the rest", index.ntotal, self.count)
            for _a, xb in self.iter_keys(index.ntotal):
                index.add(xb)  # (n, dim)
        return index

    def build_index(self, factory: str | None = None, *, train_size: int = 100_000, seed: int = 0) -> dict:
        """Bring the index up to date with every entry and commit it.

        A trained index of the same factory only gets the new entries added (append never
        retrains); "Flat" stores nothing on disk. Returns the manifest's index entry.
        """
        import faiss

        fac = resolve_factory(factory or self.manifest["index_factory"], self.count, self.dim)
        if fac == "Flat":
            entry = {"factory": "Flat", "file": None, "ntotal": self.count}
            self.commit(index=entry)
            return entry
        cur = self.manifest.get("index") or {}
        t0 = time.perf_counter()
        if cur.get("factory") == fac and cur.get("file"):
            index = self._trained_index()
            self._index = None
        else:
            index = faiss.index_factory(self.dim, fac)
            try:  # factory PQ strings train polysemous codes by default: minutes of annealing we never use
                faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
            except (RuntimeError, AttributeError):
                pass
            rng = np.random.default_rng(seed)
            n = min(self.count, train_size)
            ids = np.sort(rng.choice(self.count, size=n, replace=False))
            xt = self.keys(ids).astype(np.float32)  # (n, dim)
            log.info("training %s on %d keys", fac, n)
            index.train(xt)
            for _a, xb in self.iter_keys():
                index.add(xb)  # (b, dim)
        name = f"index-{self.manifest['generation'] + 1:06d}-{os.getpid()}.faiss"
        faiss.write_index(index, str(self.path / name))
        with open(self.path / name, "rb") as f:
            os.fsync(f.fileno())
        entry = {"factory": fac, "file": name, "ntotal": int(index.ntotal),
                 "bytes": (self.path / name).stat().st_size, "seconds": round(time.perf_counter() - t0, 2)}
        self.commit(index=entry)
        self._index = index
        return entry

    def search(self, xq: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False, rerank: int = 0) -> Neighbours:
        """k nearest stored keys of each query, one batched FAISS call.

        xq: (n, dim) float32. exact=True forces Flat search. rerank=R > 0 fetches R*k candidates
        from the approximate index and re-ranks them by exact distance to the fp16 keys.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}", "pass -k 1 or more")
        if k > self.count:
            raise InvalidInputError(f"k={k} is larger than the datastore ({self.count} entries)",
                                    f"pass -k {max(1, self.count)} or less, or add more text to the datastore")
        xq = np.ascontiguousarray(xq, dtype=np.float32)  # (n, dim)
        index = None if exact else self._trained_index()
        if index is None:
            D, I = self._flat_index().search(xq, k)  # (n, k), (n, k)
            return Neighbours(D, I)
        if nprobe is not None:
            import faiss

            try:
                faiss.extract_index_ivf(index).nprobe = int(nprobe)
            except RuntimeError:
                pass  # not an IVF index
        kk = min(self.count, k * rerank) if rerank else k
        D, I = index.search(xq, kk)  # (n, kk)
        if not rerank:
            return Neighbours(D, I)
        De = self._exact_distances(xq, I)  # (n, kk)
        order = np.argsort(De, axis=1)[:, :k]  # (n, k)
        return Neighbours(np.take_along_axis(De, order, 1).astype(np.float32), np.take_along_axis(I, order, 1))
