"""Validation of a token datastore's manifest.json (types, ranges, plain file names) and its checksums.

Why: open() used the manifest's values directly, so a hand-edited or damaged manifest gave a
TypeError, an IndexError or a read outside the folder ("shards": "x", "dim": "64", a file named
"../x") instead of an error that says what is wrong. Unknown fields are left alone: other
features (build state, calibration) own theirs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from retrieval.errors import CorruptStoreError

FIX = "rebuild it with `knnrag datastore build ... --out DIR` (the corpus files are not modified), or restore a backup"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _int(v: object, lo: int = 0, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _bad(path: Path, what: str) -> CorruptStoreError:
    return CorruptStoreError(f"datastore manifest {path}: {what}", FIX)


def _file_name(v: object) -> bool:
    return isinstance(v, str) and bool(_NAME.match(v)) and ".." not in v


def _check_list(path: Path, m: dict, key: str, fields: dict[str, Any]) -> None:
    items = m.get(key)
    if not isinstance(items, list):
        raise _bad(path, f'"{key}" must be a list, found {type(items).__name__}')
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(path, f'"{key}[{i}]" must be an object')
        for name, check in fields.items():
            optional = name.endswith("?")
            name = name.rstrip("?")
            if (name in item or not optional) and not check(item.get(name)):
                raise _bad(path, f'"{key}[{i}].{name}" has the invalid value {item.get(name)!r}'[:300])


def check_manifest(m: dict, path: Path) -> None:
    """Raise CorruptStoreError naming the first field that open() or a search could not use."""
    if not _int(m.get("format_version")):
        raise _bad(path, f'"format_version" must be a non-negative integer, found {m.get("format_version")!r}')
    for key in ("lm_id", "tokenizer_hash", "key_layer", "index_factory"):
        if not isinstance(m.get(key), str):
            raise _bad(path, f'"{key}" must be a string, found {m.get(key)!r}'[:300])
    if m.get("index_storage", "ram") not in ("ram", "ondisk"):
        raise _bad(path, f'"index_storage" must be "ram" or "ondisk", found {m.get("index_storage")!r}'[:300])
    if m.get("lm_spec") is not None and not isinstance(m["lm_spec"], str):
        raise _bad(path, '"lm_spec" must be a string or null')
    if not _int(m.get("dim"), 1, 65536):
        raise _bad(path, f'"dim" must be an integer in 1..65536, found {m.get("dim")!r}')
    for key in ("count", "generation"):
        if not _int(m.get(key)):
            raise _bad(path, f'"{key}" must be a non-negative integer, found {m.get(key)!r}')
    if "doc_count" in m and not _int(m["doc_count"]):
        raise _bad(path, f'"doc_count" must be a non-negative integer, found {m["doc_count"]!r}')
    if m.get("dtype") != "float16" or m.get("metric") != "l2":
        raise _bad(path, f'dtype {m.get("dtype")!r} / metric {m.get("metric")!r} are not supported (float16 / l2)')
    _check_list(path, m, "shards", {"count": _int, "keys": _file_name, "values": _file_name, "prov": _file_name,
                                    "keys_bytes?": _int, "values_bytes?": _int, "prov_bytes?": _int})
    _check_list(path, m, "docs", {"file": _file_name, "bytes?": _int})
    _check_index(path, m.get("index"))
    if m.get("build") is not None and not isinstance(m["build"], dict):
        raise _bad(path, '"build" must be null or an object')
    sums = m.get("checksums")
    if sums is not None and not (isinstance(sums, dict) and all(_file_name(k) and isinstance(v, str) and _SHA256.match(v)
                                                                for k, v in sums.items())):
        raise _bad(path, '"checksums" must map file names to sha256 hex digests')


def _check_index(path: Path, idx: object) -> None:
    if idx is not None:
        if not isinstance(idx, dict) or not isinstance(idx.get("factory", ""), str):
            raise _bad(path, f'"index" must be null or an object with a factory, found {idx!r}'[:300])
        for key in ("file", "ivfdata"):
            if idx.get(key) is not None and not _file_name(idx[key]):
                raise _bad(path, f'"index.{key}" is not a plain file name: {idx[key]!r}'[:300])
        if idx.get("storage", "ram") not in ("ram", "ondisk") or (idx.get("storage") == "ondisk" and not idx.get("ivfdata")):
            raise _bad(path, f'"index.storage" must be "ram", or "ondisk" with an "ivfdata" file, found {idx.get("storage")!r}'[:300])
        for key in ("ntotal", "bytes", "ivfdata_bytes"):
            if key in idx and not _int(idx[key]):
                raise _bad(path, f'"index.{key}" must be a non-negative integer, found {idx[key]!r}')


def check_values(values: Any, path: Path, vocab_size: int | None = None) -> None:
    """Stored next-token ids are vocabulary indices: a negative one, or one >= the LM's vocabulary,
    would index outside the kNN distribution (an IndexError deep in a forward pass)."""
    if not len(values):
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bound = f"0..{vocab_size - 1}" if vocab_size is not None else "non-negative"
        raise CorruptStoreError(f"datastore {path} holds next-token ids in {lo}..{hi}, outside the vocabulary ({bound})", FIX)


def live_files(m: dict) -> list[str]:
    """Every file the manifest names (shards, documents, the trained index and its on-disk lists), in manifest order."""
    names = [sh[k] for sh in m["shards"] for k in ("keys", "values", "prov")] + [d["file"] for d in m["docs"]]
    idx = m.get("index") or {}
    names += [idx[k] for k in ("file", "ivfdata") if idx.get(k)]
    return names


def record_checksums(folder: Path, m: dict) -> dict[str, str]:
    """sha256 of every live file, computed once per file (files are never rewritten under a name)."""
    from retrieval.store.verify import digest

    old = m.get("checksums") or {}
    return {name: old.get(name) or digest(folder / name) for name in live_files(m)}
