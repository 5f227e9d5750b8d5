"""The kNN-LM token datastore: (context key -> next token) pairs in a self-describing folder.

DIR/manifest.json        format, LM id + weights hash, tokenizer hash, key layer, dim, dtype, count,
                         metric, index factory, the shard and index files (with sizes), build state
DIR/keys-*.npy           (n, dim) float16, opened with mmap      } append-only shards
DIR/values-*.npy         (n,) int32 next-token ids               }
DIR/prov-*.npy           (n, 3) int64: doc index, token position, char offset of the value token
DIR/docs-*.jsonl         one {"doc", "source", "hash", "text"} per stored document (for snippets)
DIR/index-<gen>.faiss    trained FAISS index (IVF-PQ...); a Flat index is rebuilt from the keys
DIR/index-<gen>.ivfdata  with index_storage "ondisk": the index's inverted lists, mmap'ed (lm.datastore.ondisk)

Commit = new files under fresh names, fsync, then os.replace(manifest.json): a crash at any point
leaves the last committed manifest and every file it names intact. No pickle anywhere.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lm.datastore.manifest_check import check_manifest, check_values, record_checksums
from lm.datastore.token_index import resolve_factory
from retrieval.errors import CorruptStoreError, InvalidInputError, MismatchError, NotFoundError, StoreWriteError
from retrieval.store.durable import atomic_write_bytes, fsync_dir, write_bytes_synced, write_npy

log = logging.getLogger(__name__)

FORMAT = "knnrag-token-datastore"
FORMAT_VERSION = 1
_FIX = "rebuild it with `knnrag datastore build ... --out DIR` (the corpus files are not modified)"


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
        self._dead: np.ndarray | None = None
        self._dead_name: str | None = None
        self._masked: np.ndarray | None = None  # (m,) tombstones plus entries masked in memory (mask_docs)
        self._load_arrays()

    # ---- create / open -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, lm_id: str, tokenizer_hash: str, key_layer: str, dim: int,
               index_factory: str = "auto", lm_spec: str | None = None, index_storage: str = "ram") -> TokenStore:
        p = Path(path)
        if (p / "manifest.json").exists():
            raise InvalidInputError(f"{p} already holds a datastore", "open it to append, or choose a new --out")
        if index_storage not in ("ram", "ondisk"):
            raise InvalidInputError(f"index storage must be ram or ondisk, not {index_storage!r}", "pass --ondisk or nothing")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreWriteError(f"cannot create {p}: {e.strerror}", "choose a writable --out folder") from e
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "lm_id": lm_id, "tokenizer_hash": tokenizer_hash,
            "lm_spec": lm_spec, "key_layer": key_layer, "dim": int(dim), "dtype": "float16", "metric": "l2", "count": 0,
            "index_factory": index_factory, "index_storage": index_storage, "index": None, "shards": [], "docs": [], "doc_count": 0,
            "generation": 0, "build": None, "created": time.time(),
        }
        store = cls(p, manifest)
        store.commit()
        return store

    @classmethod
    def open(cls, path: str | Path, *, lm_id: str | None = None, tokenizer_hash: str | None = None,
             vocab_size: int | None = None) -> TokenStore:
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
        check_manifest(manifest, mpath)
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise MismatchError(f"{p} uses datastore format {manifest['format_version']}, newer than this knnrag",
                                "upgrade knnrag")
        if lm_id is not None and manifest["lm_id"] != lm_id:
            raise MismatchError(f"datastore {p} was built with LM {manifest['lm_id']}, not {lm_id}",
                                f"use --model matching {manifest['lm_id'].split('@')[0]}, or rebuild the datastore with this model")
        if tokenizer_hash is not None and manifest["tokenizer_hash"] != tokenizer_hash:
            raise MismatchError(f"datastore {p} was built with another tokenizer ({manifest['tokenizer_hash']})",
                                "use the model that built it, or rebuild the datastore")
        store = cls(p, manifest)
        check_values(store.values, p, vocab_size)  # vocab_size: the LM's, when the caller has loaded it
        return store

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
        check_values(self.values, self.path)

    # ---- properties ----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def ondisk(self) -> bool:
        """The IVF lists live in an mmap'ed .ivfdata file (lm.datastore.ondisk), not in RAM."""
        return self.manifest.get("index_storage", "ram") == "ondisk"

    def info(self) -> dict:
        m = self.manifest
        idx = m.get("index") or {}
        return {
            "path": str(self.path), "format_version": m["format_version"], "lm_id": m["lm_id"], "lm_spec": m.get("lm_spec"),
            "tokenizer_hash": m["tokenizer_hash"], "key_layer": m["key_layer"], "dim": m["dim"], "dtype": m["dtype"],
            "count": m["count"], "tombstoned": int((m.get("tombstones") or {}).get("count", 0)), "metric": m["metric"],
            "index_factory": idx.get("factory") or resolve_factory(m["index_factory"], m["count"], m["dim"], self.ondisk),
            "index_storage": m.get("index_storage", "ram"),
            "index_ntotal": idx.get("ntotal", 0), "shards": len(m["shards"]), "documents": m.get("doc_count", 0),
            "generation": m["generation"], "build": m.get("build"),
            "calibration": m.get("calibration"),  # None: built before calibration (old defaults apply)
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

    # ---- tombstones: entries removed from search (deleted or changed documents) ------------------
    @property
    def dead(self) -> np.ndarray:
        """(t,) sorted int64 ids of tombstoned entries (and of entries masked in memory by
        mask_docs); token_index.search never returns them."""
        t = self.manifest.get("tombstones")
        masked = self._masked
        if not t:
            return masked if masked is not None else np.zeros(0, dtype=np.int64)
        if self._dead is None or self._dead_name != t["file"]:
            self._dead = self._load_npy(t["file"], t.get("bytes"), int(t["count"]), (), "int64")
            self._dead_name = t["file"]
            if masked is not None:
                masked = self._masked = np.union1d(masked, self._dead).astype(np.int64)
        return masked if masked is not None else self._dead

    def entries_of_docs(self, docs: np.ndarray) -> np.ndarray:
        """(e,) ids of every entry whose provenance is one of these document indices."""
        docs = np.asarray(docs, dtype=np.int64)
        hit = [np.flatnonzero(np.isin(np.asarray(p[:, 0]), docs)) + int(self._offsets[i]) for i, p in enumerate(self._prov)]
        return np.concatenate(hit).astype(np.int64) if hit else np.zeros(0, dtype=np.int64)

    def mask_docs(self, docs: np.ndarray) -> None:
        """Hide these documents' entries from this process's searches without writing anything
        (a reader's view of deletes the datastore has not been told about; lm.knn_index.mask_stale)."""
        self._masked = None
        base = self.dead
        self._masked = np.union1d(base, self.entries_of_docs(docs)).astype(np.int64)

    def refresh_tombstones(self) -> bool:
        """Re-read the manifest when another process committed tombstones since: a running server
        then stops returning entries deleted elsewhere at once. Returns True when it changed."""
        try:
            m = json.loads((self.path / "manifest.json").read_bytes())
        except (OSError, ValueError):
            return False
        if m.get("generation") == self.manifest.get("generation"):
            return False
        if m.get("count") != self.manifest.get("count") or m.get("shards") != self.manifest.get("shards"):
            return False  # new entries need the index reopened: the next open sees them
        self.manifest["tombstones"] = m.get("tombstones")
        self.manifest["generation"] = m.get("generation")
        self._masked = None
        return True

    def tombstone_docs(self, docs: np.ndarray) -> int:
        """Tombstone every entry whose provenance is one of these document indices; returns how many."""
        ids = self.entries_of_docs(docs)
        masked, self._masked = self._masked, None
        before = len(self.dead)
        dead = np.union1d(self.dead, ids).astype(np.int64)
        if masked is not None:
            self._masked = np.union1d(masked, ids).astype(np.int64)
        if len(dead) == before:
            return 0
        name = self._name("tombstones", "npy")
        write_npy(self.path / name, dead)
        self.commit(tombstones={"file": name, "count": int(len(dead)), "bytes": (self.path / name).stat().st_size})
        return int(len(dead) - before)

    def tombstone_sources(self, sources: list[str]) -> int:
        """Tombstone the entries of every stored document from these sources (deleted or changed files)."""
        want = set(sources)
        return self.tombstone_docs(np.asarray([d["doc"] for d in self.docs() if d["source"] in want], dtype=np.int64))

    def commit(self, *, build: dict | None | str = "keep", index: dict | None | str = "keep",
               tombstones: dict | None | str = "keep", fields: dict | None = None) -> None:
        """Publish staged shards/docs (and a new index entry) by atomically replacing manifest.json.

        `fields`: other top-level manifest records to set in the same commit (heldout, calibration)."""
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
        if tombstones != "keep":
            m["tombstones"] = tombstones
        m.update(fields or {})
        try:
            fsync_dir(self.path)  # the staged shards' names are durable before the manifest names them
        except OSError as e:
            raise StoreWriteError(f"cannot write datastore {self.path}: {e.strerror}", "check free space and permissions") from e
        m["checksums"] = record_checksums(self.path, m)  # lm.datastore.verify checks them
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
        idx = self.manifest.get("index") or {}
        live |= {idx[k] for k in ("file", "ivfdata") if idx.get(k)}
        if self.manifest.get("tombstones"):
            live.add(self.manifest["tombstones"]["file"])
        for f in self.path.iterdir():
            if f.is_file() and f.name not in live and f.name.split("-")[0] in ("keys", "values", "prov", "docs", "index", "tombstones"):
                try:
                    f.unlink()
                except OSError:
                    pass

    # ---- FAISS index (lm.datastore.token_index) -------------------------------------------------
    def build_index(self, factory: str | None = None, *, train_size: int = 100_000, seed: int = 0, **ondisk_kw: Any) -> dict:
        """token_index.build_index; ondisk_kw (part_entries, add_parts, by_shards) reach lm.datastore.ondisk.build."""
        from lm.datastore import token_index

        return token_index.build_index(self, factory, train_size=train_size, seed=seed, **ondisk_kw)

    def search(self, xq: np.ndarray, k: int, *, nprobe: int | None = None, exact: bool = False, rerank: int = 0):
        """k nearest stored keys of each query: token_index.search."""
        from lm.datastore import token_index

        return token_index.search(self, xq, k, nprobe=nprobe, exact=exact, rerank=rerank)

    def _trained_index(self) -> Any:
        from lm.datastore import token_index

        return token_index.trained_index(self)
