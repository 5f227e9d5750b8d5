"""What the page's store endpoints do (worker thread): the same calls as the MCP tools, answered as
plain JSON dicts with the same bounds (hits cut by tool_support.bound_hits, texts by MAX_HIT_TEXT).

Every store access holds the state's gate shared, LM work the state's lm_lock, as the tools do.
"""
from __future__ import annotations

import re
from typing import Any

from mcp_server import tool_support as T
from mcp_server.web.models import AskIn, ContextIn, IndexIn, SearchIn
from retrieval.errors import CorruptStoreError

MAX_MARKS = 200  # highlighted words per hit text


def info(state: Any) -> dict:
    cfg = state.config
    return {"store": str(cfg.store), "datastore": str(cfg.datastore) if cfg.datastore else None,
            "model": cfg.model or "bundled SmolLM2-135M-Instruct", "allow_roots": [str(r) for r in cfg.allow_roots],
            "limits": {"query_chars": T.MAX_QUERY_CHARS, "text_chars": T.MAX_TEXT_CHARS}}


def _knn_calibration(manifest: dict) -> dict:
    raw = manifest.get("calibration")
    if raw and "k" in raw:
        return {"state": "calibrated", "k": raw["k"], "temperature": raw["temperature"], "lambda": raw["lambda"],
                "summary": raw.get("summary")}
    why = raw["skipped"] if raw and "skipped" in raw else "built before calibration existed"
    return {"state": "not calibrated", "summary": f"not calibrated ({why}): run `knnrag datastore calibrate`"}


def knn_half(path: Any) -> dict | None:
    """The token datastore at `path`: entries and calibration, from its manifest (no LM load)."""
    from lm.datastore.token_store import TokenStore

    if path is None or not (path / "manifest.json").is_file():
        return None
    ds = TokenStore.open(path)
    return {"path": str(path), "entries": ds.count, "live_entries": ds.count - len(ds.dead),
            "lm_id": ds.manifest.get("lm_id"), "calibration": _knn_calibration(ds.manifest)}


def _fusion(fusion: dict) -> dict:
    kept = fusion.get("calibration") or {}
    if fusion.get("source") == "calibrated":
        cfg = kept.get("config") or {}
        what = ", ".join(f"{k}={v}" for k, v in cfg.items() if isinstance(v, (int, float, str)))
        return {"state": "calibrated", "summary": f"calibrated fusion: {what}"}
    if kept:
        return {"state": "default", "summary": "calibration ran and kept the default fusion"}
    return {"state": "default", "summary": "default fusion (`knnrag calibrate` fits it to this collection)"}


def collections(state: Any) -> dict:
    from lm.knn_index import datastore_dir

    rows = []
    with state.gate.shared():
        store = state.store()
        for r in store.list_collections():
            s = store.stats(r["name"])
            rows.append({"name": r["name"], "chunks": s["chunks"], "sources": s["sources"], "embedder": s["embedder"],
                         "dim": s["dim"], "index_type": s["index_type"], "generation": s["generation"],
                         "disk_bytes": s["disk_bytes"], "fusion": _fusion(s.get("fusion") or {}),
                         "knn": knn_half(datastore_dir(store.path, r["name"]))})
    server_ds = knn_half(state.config.datastore) if state.config.datastore else None
    return {"collections": rows, "datastore": server_ds}


def verify(state: Any, collection: str) -> dict:
    """`knnrag verify` for one collection (checksums included) and its own datastore: damage is reported."""
    from lm.datastore.verify import verify_datastore
    from lm.knn_index import datastore_dir

    with state.gate.shared():
        store = state.store()
        T.require_collection(store, collection)
        try:
            rep = store.verify(collection)
            out = {"ok": True, "problems": [], "generation": rep.get("generation"), "checksums": rep.get("checksums")}
        except CorruptStoreError as e:
            out = {"ok": False, "problems": [e.message], "generation": None, "checksums": "not checked"}
        own = datastore_dir(store.path, collection)
        if (own / "manifest.json").is_file():
            ds = verify_datastore(own)
            out["knn"] = {"ok": ds["ok"], "problems": ds["problems"][:20], "checksums": ds["checksums"]}
            out["ok"] = out["ok"] and ds["ok"]
    return {"collection": collection, **out}


def marks(text: str, stems: set[str], tokenizer: Any) -> list[list[int]]:
    """[start, end) of each word of `text` whose BM25 term (stemmed, stop words out) is a query term."""
    split = getattr(getattr(tokenizer, "_split", None), "__self__", None)
    pattern = split if isinstance(split, re.Pattern) else re.compile(r"(?u)[^\W_]{2,}")
    found = list(pattern.finditer(text))
    terms = _terms({m.group() for m in found}, tokenizer)
    return [[m.start(), m.end()] for m in found if terms.get(m.group()) in stems][:MAX_MARKS]


def _terms(words: set[str], tokenizer: Any) -> dict[str, str | None]:
    """word -> its BM25 term (None for a stop word): one batched stemmer call (PyStemmer, C) for all the
    words of a hit: marking 10 SQuAD-Rhine hits took 10.7 ms word by word, 1.1 ms batched (bench_web);
    a tokenizer without those parts is asked word by word."""
    stop, order = getattr(tokenizer, "_stop", None), sorted(words)
    if stop is None or not hasattr(tokenizer, "_stem"):
        return {w: next(iter(tokenizer(w)), None) for w in order}
    stem = tokenizer._stem  # PyStemmer's stemWords, or None without a stemmer
    lower = [w.lower() for w in order]
    kept = [w for w in lower if w not in stop]
    stemmed = dict(zip(kept, stem(kept) if stem else kept))
    return {w: stemmed.get(lw) for w, lw in zip(order, lower)}


def search(state: Any, req: SearchIn) -> dict:
    with state.gate.shared():
        store = state.store()
        T.require_collection(store, req.collection)
        filters = dict(req.filters) if req.filters else None
        found = store.search(req.query, k=req.k, mode=req.mode, filters=filters or None, collection=req.collection)
        tok = store.collection(req.collection).tokenizer()
    hits = [T.hit(h) for h in found]
    kept, truncated, note = T.bound_hits(hits, state.config.max_result_chars - 1000)
    stems = set(tok(req.query))
    rows = [{**h.model_dump(mode="json"), "marks": marks(h.text, stems, tok)} for h in kept]
    return {"query": req.query[:500], "collection": req.collection, "mode": req.mode, "hits": rows,
            "returned": len(rows), "found": len(found), "truncated": truncated, "note": note}


def context(state: Any, req: ContextIn) -> dict:
    from retrieval.store import admin

    with state.gate.shared():
        store = state.store()
        T.require_collection(store, req.collection)
        pre, mid, post = admin.chunk_context(store, req.id, before=req.before, after=req.after,
                                             collection=req.collection)
    dump = [T.hit(h).model_dump(mode="json") for h in (*pre, mid, *post)]
    return {"collection": req.collection, "id": req.id, "before": dump[:len(pre)], "chunk": dump[len(pre)],
            "after": dump[len(pre) + 1:]}


def ask(state: Any, req: AskIn) -> dict:
    """The `ask` tool's call; `phrase` (the answer's phrase with its offsets) is passed on when lm.rag gives one."""
    from lm.rag.answer import RagConfig, answer

    with state.gate.shared():
        store = state.store()
        T.require_collection(store, req.collection)
        extra = {} if state.config.min_score is None else {"min_score": state.config.min_score}
        cfg = RagConfig(k=req.k, answer_mode=req.mode, model=state.config.model, **extra)
        with state.lm_lock:
            res = answer(req.question, store=store, knnlm=lambda: state.ask_knnlm(req.collection),
                         collection=req.collection, config=cfg)
    d = T.jsonable(res.to_dict())
    d["answer"] = str(d.get("answer") or "")[:20_000]
    d["question"] = req.question[:500]
    d["spans"] = (d.get("spans") or [])[:50]
    d["citations"] = (d.get("citations") or [])[:20]
    return d


def start_index(state: Any, req: IndexIn) -> dict:
    from mcp_server.write_tools import job_out, start_index_job

    job = start_index_job(state, list(req.paths), req.collection, req.knn)
    return job_out(job).model_dump(mode="json")


def job(state: Any, job_id: str) -> dict:
    from mcp_server.write_tools import job_out

    return job_out(state.jobs.get(job_id)).model_dump(mode="json")
