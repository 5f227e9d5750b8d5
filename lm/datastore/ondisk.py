"""On-disk IVF-PQ for the token datastore: train once, add part by part, merge the lists into one .ivfdata file.

Why: an in-RAM IVF index holds every code and id in RAM (72 bytes an entry at PQ64), so a datastore
of a few hundred million entries does not fit one machine. Here the index is trained ONCE on a
deterministic sample of the keys; each part of the entries (a fixed id range, or a Ray task's
shards) is added to a copy of the trained empty index with global entry ids and written to its own
file; the parts' inverted lists are merged into one OnDiskInvertedLists file that a search mmaps,
so the loaded index keeps only the coarse quantizer and the codebooks in RAM.

The merge is faiss.contrib.ondisk.merge_ondisk's body with three changes: the sources are
InvertedLists objects, so an append merges the previous .ivfdata (opened from the datastore
folder, not from the absolute path FAISS wrote into the index file) with the new parts; FAISS's
printf chatter ("resizing ...") goes to stderr, since stdout is MCP's and --json's; and the result
is reopened read-only (IO_FLAG_READ_ONLY), because a writable OnDiskInvertedLists lets an add()
rewrite the committed file in place. Fast-scan indexes (PQ..x4fs) keep block lists that
OnDiskInvertedLists cannot hold, so on-disk indexes use 8-bit PQ codes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import CorruptStoreError, InvalidInputError
from retrieval.store.durable import checkpoint, fsync_file, generation_write_error

log = logging.getLogger(__name__)
PART_ENTRIES = 1_000_000  # entries per part: its in-RAM index is ~72 MB at PQ64 while it is added
ONDISK_FACTORY = "IVF{nlist},PQ{m}"
_FIX = "rebuild it with `knnrag datastore build ... --out DIR --ondisk` (the corpus files are not modified), or restore a backup"


class PartJob(NamedTuple):
    """One part: entries [lo, hi), read from `files` ((keys file, its first entry id, its entries)), written to `name`."""

    name: str
    lo: int
    hi: int
    files: list[tuple[str, int, int]]

    def to_row(self) -> dict:
        return {"name": self.name, "lo": self.lo, "hi": self.hi, "files": json.dumps(self.files)}

    @classmethod
    def from_row(cls, row: dict) -> PartJob:
        return cls(str(row["name"]), int(row["lo"]), int(row["hi"]), [tuple(f) for f in json.loads(str(row["files"]))])


AddParts = Callable[[np.ndarray, list[PartJob]], None]  # (serialised trained index, jobs): writes every job's file


def ondisk_factory(count: int, dim: int, nlist: int) -> str:
    """auto with --ondisk: 8-bit PQ with up to 64 sub-quantizers (the largest divisor of dim <= 64)."""
    m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    return ONDISK_FACTORY.format(nlist=nlist, m=m)


def new_index(factory: str, dim: int) -> Any:
    """An untrained index of `factory` whose lists can live on disk, else InvalidInputError."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory)
    except RuntimeError as e:
        raise InvalidInputError(f"FAISS cannot build the index {factory!r}: {str(e).splitlines()[-1][:200]}",
                                "pass an IVF factory such as --index IVF1024,PQ64") from e
    try:
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        raise InvalidInputError(f"--ondisk needs an IVF index, not {factory!r}", "pass --index IVF1024,PQ64 or --index auto") from None
    if isinstance(ivf, faiss.IndexIVFFastScan) or isinstance(ivf, faiss.IndexIVFPQR):
        raise InvalidInputError(f"{factory!r} keeps its lists in a layout FAISS cannot store on disk (fast-scan / re-ranked PQ)",
                                "drop the `fs` suffix (e.g. --index IVF1024,PQ64) or drop --ondisk")
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # minutes of annealing for codes we never use
    return index


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """FAISS's OnDiskInvertedLists printf()s to fd 1; point fd 1 at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def empty_copy(index_file: Path) -> np.ndarray:
    """The trained, empty index behind a committed on-disk index, serialised (faiss.serialize_index)."""
    import faiss

    index = faiss.read_index(str(index_file), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)  # no mmap
    ivf = faiss.extract_index_ivf(index)
    lists: Any = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns (and frees) them now
    index.ntotal = ivf.ntotal = 0
    return faiss.serialize_index(index)


def train(store, factory: str, train_size: int, seed: int) -> tuple[np.ndarray, dict]:
    """Train once on a seeded sample of the keys (ids sorted: the same sample for every build of
    these keys); returns the serialised empty index and its training record."""
    import faiss

    index = new_index(factory, store.dim)
    n = min(store.count, train_size)
    ids = np.sort(np.random.default_rng(seed).choice(store.count, size=n, replace=False))
    log.info("training %s on %d keys", factory, n)
    index.train(store.keys(ids).astype(np.float32))  # (n, dim)
    return faiss.serialize_index(index), {"keys": int(n), "seed": int(seed)}


def plan_parts(store, start: int, part_entries: int, by_shards: bool, tag: str) -> list[PartJob]:
    """Entries start..count as parts: fixed ranges of part_entries, or (by_shards, the Ray build)
    runs of whole datastore shards of >= part_entries entries each (a task reads whole files)."""
    offs = store._offsets  # (shards+1,) first entry id of each shard
    files = [(sh["keys"], int(offs[i]), int(sh["count"])) for i, sh in enumerate(store.manifest["shards"])]
    if by_shards:
        cuts = [start]
        for _f, a, n in files:
            if a + n > start and a + n - cuts[-1] >= part_entries:
                cuts.append(a + n)
        if cuts[-1] < store.count:
            cuts.append(store.count)
    else:
        cuts = list(range(start, store.count, part_entries)) + [store.count]
    return [PartJob(f"index-{tag}-part-{j:05d}.faiss", lo, hi, [f for f in files if f[1] < hi and f[1] + f[2] > lo])
            for j, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])) if hi > lo]


def add_part(trained: np.ndarray, folder: Path, job: PartJob, batch: int = 65536) -> int:
    """Add entries job.lo..job.hi, with their global ids, to a copy of the trained index; write it
    to job.name (fsync'ed). Keys are read from the shard files (mmap), so any process can run it."""
    import faiss

    index = faiss.deserialize_index(trained)
    for name, first, n in job.files:
        keys = np.load(folder / name, mmap_mode="r", allow_pickle=False)  # (n, dim) fp16
        lo, hi = max(job.lo, first), min(job.hi, first + n)
        for a in range(lo, hi, batch):
            b = min(a + batch, hi)
            index.add_with_ids(np.ascontiguousarray(keys[a - first:b - first], dtype=np.float32), np.arange(a, b, dtype=np.int64))
    faiss.write_index(index, str(folder / job.name))
    fsync_file(folder / job.name)
    return int(index.ntotal)


def add_parts_here(folder: Path) -> AddParts:
    def run(trained: np.ndarray, jobs: list[PartJob]) -> None:
        for job in jobs:
            add_part(trained, folder, job)
    return run


def merge_lists(trained: np.ndarray, sources: list[Any], ivfdata: Path) -> Any:
    """The trained index with the sources' inverted lists (in order) merged into one on-disk file."""
    import faiss

    lib: Any = faiss  # (the stubs lack the SWIG vector types)
    index = faiss.deserialize_index(trained)
    ivf = faiss.extract_index_ivf(index)
    out: Any = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    vec = lib.InvertedListsPtrVector()
    for lists in sources:
        vec.push_back(lists)
    ntotal = out.merge_from_multiple(vec.data(), vec.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(out, True)
    out.this.disown()
    return index


def _part_lists(path: Path) -> tuple[Any, Any]:
    """(index, its inverted lists) of a part file, mmap'ed (the lists of all parts may exceed RAM)."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    return index, faiss.extract_index_ivf(index).invlists


def build(store, factory: str, *, train_size: int, seed: int, part_entries: int = PART_ENTRIES,
          add_parts: AddParts | None = None, by_shards: bool = False) -> dict:
    """Bring the on-disk index up to date and commit it. An index of the same factory keeps its
    training: only the entries after its ntotal become new parts, merged after its lists."""
    import faiss

    t0 = time.perf_counter()
    cur = store.manifest.get("index") or {}
    keep: list[Any] = []  # indexes whose lists the merge reads: alive until it is done
    sources: list[Any] = []
    if cur.get("factory") == factory and cur.get("storage") == "ondisk" and cur.get("file"):
        prev = open_main(store, cur)
        if prev.ntotal == store.count:
            return cur
        trained, record, start = empty_copy(store.path / cur["file"]), cur["train"], int(prev.ntotal)
        keep.append(prev)
        sources.append(faiss.extract_index_ivf(prev).invlists)
    else:
        (trained, record), start = train(store, factory, train_size, seed), 0
    tag = f"{store.manifest['generation'] + 1:06d}-{os.getpid()}"
    jobs = plan_parts(store, start, max(1, part_entries), by_shards, tag)
    t_add = time.perf_counter()
    (add_parts or add_parts_here(store.path))(trained, jobs)
    t_merge = time.perf_counter()
    name, data = f"index-{tag}.faiss", f"index-{tag}.ivfdata"
    try:
        with stdout_to_stderr():
            for job in jobs:
                part, lists = _part_lists(store._check_file(job.name, None))
                keep.append(part)
                sources.append(lists)
            index = merge_lists(trained, sources, store.path / data)
            checkpoint("ondisk-merge")  # crash tests: killed here, the old manifest and its index must stay valid
            faiss.write_index(index, str(store.path / name))
            ntotal = int(index.ntotal)
            del index, keep, sources  # unmaps the merged file before it is fsync'ed
        for f in (data, name):
            fsync_file(store.path / f)
    except (OSError, RuntimeError) as e:  # a full disk: FAISS raises RuntimeError; the last commit is intact
        raise generation_write_error(store.path, e) from e
    if ntotal != store.count:
        raise CorruptStoreError(f"the merged index holds {ntotal} entries, the datastore {store.count}", _FIX)
    entry = {"factory": factory, "storage": "ondisk", "file": name, "bytes": (store.path / name).stat().st_size,
             "ivfdata": data, "ivfdata_bytes": (store.path / data).stat().st_size, "ntotal": ntotal, "train": record,
             "parts": len(jobs), "seconds": round(time.perf_counter() - t0, 2),
             "add_seconds": round(t_merge - t_add, 2), "merge_seconds": round(time.perf_counter() - t_merge, 2)}
    store._index = None
    store.commit(index=entry)  # the old manifest (and its index) stays valid until this replace; gc drops the parts
    return entry


def open_main(store, meta: dict) -> Any:
    """The committed on-disk index, its lists mmap'ed read-only from this datastore's folder."""
    import faiss

    f = store._check_file(meta["file"], meta.get("bytes"))
    data = store._check_file(meta["ivfdata"], meta.get("ivfdata_bytes"))
    try:
        index = faiss.read_index(str(f), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)  # lists: mapped below
        ivf: Any = faiss.extract_index_ivf(index)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
    except RuntimeError as e:
        raise CorruptStoreError(f"FAISS index {f} is corrupt: {str(e).splitlines()[0]}", _FIX) from e
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise CorruptStoreError(f"FAISS index {f} has no on-disk lists", _FIX)
    if lists.totsize > data.stat().st_size:  # mapping past the end would crash the first search that reads there (SIGBUS)
        raise CorruptStoreError(f"{data} is truncated ({data.stat().st_size} bytes, the index expects {lists.totsize})", _FIX)
    if index.d != store.dim or index.ntotal > store.count:
        raise CorruptStoreError(f"FAISS index {f} does not match the keys ({index.ntotal} vs {store.count})", _FIX)
    lists.filename = str(data)
    lists.read_only = True
    try:
        lists.do_mmap()
    except RuntimeError as e:
        raise CorruptStoreError(f"cannot map {data}: {str(e).splitlines()[0]}", _FIX) from e
    return index


class OnDiskIndex:
    """The on-disk index plus, for entries committed after it (an interrupted append), an in-RAM
    tail index from the same training; search() merges the two like one index would."""

    def __init__(self, main: Any, tail: Any, count: int) -> None:
        import faiss

        self.main, self.tail, self.count = main, tail, count
        self.ivf = faiss.extract_index_ivf(main)
        self.d, self.ntotal = main.d, count

    def search(self, xq: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        D, I = self.main.search(xq, k, params=params)  # (n, k)
        if I.size and I.max() >= self.main.ntotal:
            raise CorruptStoreError(f"the on-disk index returned entry id {int(I.max())} of {self.main.ntotal}: its lists are damaged", _FIX)
        if self.tail is None or not self.tail.ntotal:
            return D, I
        heap = faiss.ResultHeap(len(xq), k)
        heap.add_result(D, I)
        Dt, It = self.tail.search(xq, k, params=params)  # (n, k)
        heap.add_result(Dt, It)
        heap.finalize()
        return heap.D, heap.I


def load(store, meta: dict) -> OnDiskIndex:
    """open_main, and the tail of entries past its ntotal added in RAM to an empty copy (never to the mapped file)."""
    import faiss

    main = open_main(store, meta)
    tail = None
    if main.ntotal < store.count:
        log.info("on-disk index covers %d of %d entries; adding the rest in RAM", main.ntotal, store.count)
        tail = faiss.deserialize_index(empty_copy(store.path / meta["file"]))
        for a, xb in store.iter_keys(int(main.ntotal)):
            tail.add_with_ids(xb, np.arange(a, a + len(xb), dtype=np.int64))  # (b, dim)
    return OnDiskIndex(main, tail, store.count)
