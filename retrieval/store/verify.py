"""Checksums of a store's artefacts: recorded at commit, sizes checked at open, digests on verify.

Why: a garbled BM25 array of the right size, or a flipped byte in a FAISS file, passes every
structural check and silently changes scores. Each generation's gen.json records the size and
sha256 of every file in it; opening compares sizes (one stat per file), `knnrag verify` the digests.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from retrieval.errors import CorruptStoreError

FIX = "the store was damaged outside knnrag; restore a backup, or delete the collection and re-index"
NO_CHECKSUMS = "no checksums recorded (made by an older knnrag; re-index or commit once to record them)"


def digest(path: str | os.PathLike) -> str:
    """sha256 hex of a file, streamed in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record(folder: Path, skip: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file below `folder` (sorted, POSIX names)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in skip:
            out[rel] = {"bytes": path.stat().st_size, "sha256": digest(path)}
    return out


def _entries(files: object, where: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for k, v in files.items()
    ):
        raise CorruptStoreError(f"the checksum list in {where} is malformed", FIX)
    return files


def size_problems(folder: Path, files: object) -> list[str]:
    """Missing files and size mismatches (cheap: one stat each)."""
    problems = []
    for rel, want in _entries(files, folder).items():
        try:
            got = (folder / rel).stat().st_size
        except FileNotFoundError:
            problems.append(f"{folder / rel} is missing")
            continue
        if got != want["bytes"]:
            problems.append(f"{folder / rel} has {got} bytes, {want['bytes']} were written")
    return problems


def check_sizes(folder: Path, files: object) -> None:
    """At open: raise CorruptStoreError naming the first missing or resized artefact."""
    problems = size_problems(folder, files)
    if problems:
        raise CorruptStoreError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""), FIX)


def digest_problems(folder: Path, files: object) -> list[str]:
    """Every missing, resized or altered artefact (reads every byte)."""
    problems = size_problems(folder, files)
    bad = {p.split(" ", 1)[0] for p in problems}
    for rel, want in _entries(files, folder).items():
        path = folder / rel
        if str(path) not in bad and digest(path) != want["sha256"]:
            problems.append(f"{path} is altered (sha256 differs from the one recorded at commit)")
    return problems


# --------------------------------------------------------------------------- collections and stores
def _consistency(c: Any, conn: Any, snap: Any) -> tuple[list[str], int]:
    """Rows, FAISS and BM25 of one snapshot agree (same ids, same vectors); (problems, rows)."""
    import numpy as np

    from retrieval.index import vector_index
    from retrieval.store import chunk_db

    problems = []
    bad_vec = conn.execute("SELECT count(*) FROM chunks WHERE length(vec) != ?", (4 * c.dim,)).fetchone()[0]
    if bad_vec:
        n = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return [f"{bad_vec} stored vectors do not have the manifest's dimension {c.dim}"], n
    ids, xb = chunk_db.all_vectors(conn, c.dim)  # (N,), (N, D)
    if snap.index is None:
        return ([f"{len(ids)} rows but no index"] if len(ids) else []), len(ids)
    fids = vector_index.index_ids(snap.index)
    live = np.setdiff1d(fids, snap.tombstones)
    if len(live) != len(fids) - len(snap.tombstones) or not np.array_equal(np.sort(live), ids):
        problems.append(f"FAISS holds {len(live)} live ids, SQLite {len(ids)} rows")
    elif len(ids):
        try:
            got = np.asarray(snap.index.reconstruct_batch(ids), np.float32)  # (N, D)
        except RuntimeError:  # lossy or non-reconstructible factories: ids checked only
            got = None
        if got is not None and "Flat" in snap.factory and not np.allclose(got, xb, atol=1e-5):
            problems.append("FAISS vectors differ from the stored vectors")
    if snap.bm25 is None or not np.array_equal(np.asarray(snap.bm25.ids), ids):
        problems.append(f"BM25 holds {0 if snap.bm25 is None else snap.bm25.num_docs} rows, SQLite {len(ids)}")
    return problems, len(ids)


def check_collection(c: Any, *, checksums: bool = True) -> dict:
    """Everything `verify` checks in one collection, as a report: SQLite's own quick_check, rows
    against FAISS and BM25, and (with `checksums`) every generation file against its sha256."""
    from retrieval.store.durable import read_json

    with c.reading() as (conn, snap):
        problems = [f"SQLite: {r[0]}" for r in conn.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        found, rows = _consistency(c, conn, snap)
        problems += found
        state = "no generation committed yet"
        if snap.generation:
            gdir = c.dir / f"gen-{snap.generation}"
            files = read_json(gdir / "gen.json", "generation record").get("files")
            if files is None:
                state = NO_CHECKSUMS
            elif checksums:
                bad = digest_problems(gdir, files)
                problems += bad
                state = "mismatch" if bad else f"ok ({len(files)} files)"
            else:
                state = "not checked"
        return {"collection": c.name, "generation": snap.generation, "chunks": int(rows), "checksums": state,
                "problems": problems, "ok": not problems}
