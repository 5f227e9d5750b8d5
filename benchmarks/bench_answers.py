"""`ask` end to end on four corpora, each answered by a model fitted WITHOUT it (leave one corpus out).

Per corpus (this project's README, installed packages' long descriptions, squad2-rhine, SciFact
abstracts; question sets in benchmarks/data/questions): gold answer inside the answer, mean words,
right file cited, answerable questions answered, off-topic questions abstained (other libraries
and topics, and other corpora's questions, asked of the store), phrase coverage and precision,
seconds per question. Two baselines in the same run, on the same hits: the top hit's whole chunk,
and the best unit (sentence, list item, table row) of the top 5 chunks by MiniLM cosine. Neither
abstains. The held-out model for corpus C is lm.rag.fit.fit on the committed rows of the other
corpora (benchmarks/data/answer_rows.jsonl.gz), run through lm.rag.answer.answer with the real store.

  python -m benchmarks answers [--quick] [--per-set N]     (--quick: 12 questions per set)

Stores are built under .bench/answers/store (shared with benchmarks/fit_answers.py, which builds
the same collections from benchmarks/data/questions/corpora.json).
"""
from __future__ import annotations

import argparse
import gzip
import json
import time

from benchmarks._shared_answers import build_answer_stores
from benchmarks.common import ROOT, WORK, median, record

PEER = "top hit's whole chunk; best unit by MiniLM cosine"
QDIR = ROOT / "benchmarks" / "data" / "questions"
ROWS = ROOT / "benchmarks" / "data" / "answer_rows.jsonl.gz"


class _NoLM:
    def __call__(self):
        raise AssertionError("extractive answers and abstentions must not load the LM")


def _right(q: dict, source: str | None, doc_id: str | None) -> bool:
    f = q.get("file") or ""
    return bool(f) and source is not None and (source.endswith("/" + f) or doc_id == f)


def baselines(store, q: dict, collection: str) -> dict:
    """The two peers on the question's top 5 hybrid hits."""
    import numpy as np

    from lm.rag.rows import holds
    from lm.rag.spans import units, words

    t0 = time.perf_counter()
    hits = store.search(q["question"], k=5, mode="hybrid", collection=collection)
    t_search = time.perf_counter() - t0
    if not hits:
        return {"chunk": (False, 0, False, t_search), "cos": (False, 0, False, t_search)}
    top = hits[0]
    chunk = (holds(top.text, q["answers"]), len(words(top.text)), _right(q, top.source, top.doc_id), t_search)
    emb = store.embedder_for(store.collection(collection))
    cands = [(h, u) for h in hits for u in units(h.text)]
    V = np.stack([emb.embed_query(x) for x in [q["question"]] + [u.text for _h, u in cands]])  # (1 + n, d)
    h, u = cands[int(np.argmax(V[1:] @ V[0]))]
    cos = (holds(u.text, q["answers"]), len(words(u.text)), _right(q, h.source, h.doc_id), time.perf_counter() - t0)
    return {"chunk": chunk, "cos": cos}


def run_corpus(store, corpus: str, collection: str, qs: list[dict], off: list[dict], fitted) -> dict:
    from lm.rag.answer import RagConfig, answer
    from lm.rag.rows import holds
    from lm.rag.spans import words

    cfg = RagConfig(answer_mode="extractive")
    ours: list[dict] = []
    peers: dict[str, list[tuple]] = {"chunk": [], "cos": []}
    secs: list[float] = []
    for q in qs:
        t0 = time.perf_counter()
        res = answer(q["question"], store=store, knnlm=_NoLM(), collection=collection, config=cfg, fitted=fitted)
        secs.append(time.perf_counter() - t0)
        sp = res.answer_span
        ours.append({"answered": res.grounded, "gold_in": bool(res.grounded and holds(res.answer, q["answers"])),
                     "words": len(words(res.answer)) if res.grounded else 0,
                     "right": bool(sp and _right(q, sp.source, next((c.chunk_id for c in res.citations if c.cited), None))
                                   or sp and _doc_right(store, collection, q, sp.chunk_id)),
                     "phrase": res.phrase.text if res.phrase else None,
                     "phrase_ok": bool(res.phrase and holds(res.phrase.text, q["answers"]))})
        for k, v in baselines(store, q, collection).items():
            peers[k].append(v)
    abst = [not answer(q["question"], store=store, knnlm=_NoLM(), collection=collection, config=cfg,
                       fitted=fitted).grounded for q in off]
    answered = [x for x in ours if x["answered"]]
    given = [x for x in answered if x["phrase"] is not None]

    def mean(xs) -> float:
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    out = {"corpus": corpus, "questions": len(qs), "offtopic": len(off),
           "gold_in_answer": mean([x["gold_in"] for x in ours]), "mean_words": mean([x["words"] for x in answered]),
           "right_file": mean([x["right"] for x in answered]), "answered": mean([x["answered"] for x in ours]),
           "offtopic_abstained": mean(abst), "phrase_coverage": mean([x["phrase"] is not None for x in answered]),
           "phrase_precision": mean([x["phrase_ok"] for x in given]), "s_per_question": round(median(secs), 3)}
    for k, v in peers.items():
        out[f"{k}_gold_in"] = mean([x[0] for x in v])
        out[f"{k}_words"] = mean([x[1] for x in v])
        out[f"{k}_right_file"] = mean([x[2] for x in v])
        out[f"{k}_s"] = round(median([x[3] for x in v]), 3)
    return out


def _doc_right(store, collection: str, q: dict, chunk_id: str) -> bool:
    got = store.get([chunk_id], collection=collection)
    return bool(got) and got[0].doc_id == q.get("file")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 questions per set")
    ap.add_argument("--per-set", type=int, default=None, help="the first N questions of each set (default: all)")
    args = ap.parse_args(argv)
    from lm.rag import fit, params
    from retrieval.store.docstore import DocStore

    spec = json.loads((QDIR / "corpora.json").read_text(encoding="utf-8"))
    store_path = WORK / "answers" / "store"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    build_answer_stores(store_path, spec)
    with gzip.open(ROWS, "rt", encoding="utf-8") as f:
        rows = [json.loads(x) for x in f if x.strip()]
    n = 12 if args.quick else args.per_set
    results = []
    with DocStore.open(store_path, create=False, read_only=True) as store:
        for corpus, collection in spec["corpora"].items():
            qs = [json.loads(x) for x in (QDIR / f"{corpus}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()][:n]
            off = [{"question": r["question"]} for r in rows if r["kind"] == "offtopic" and r["store"] == collection][:n]
            held = params.from_model(fit.fit([r for r in rows if r["store"] != collection and r["corpus"] != corpus]))
            res = run_corpus(store, corpus, collection, qs, off, held)
            results.append(res)
            print(json.dumps(res), flush=True)
            for target, ours, peer, unit, hib in (
                    ("gold in answer", res["gold_in_answer"], res["chunk_gold_in"], "share", True),
                    ("words per answer", res["mean_words"], res["chunk_words"], "words", False),
                    ("right file", res["right_file"], res["chunk_right_file"], "share", True),
                    ("seconds per question", res["s_per_question"], res["chunk_s"], "s", False)):
                record("answers", f"{corpus}: {target}", ours, peer, unit, peer_name="top hit's whole chunk",
                       higher_is_better=hib, quick=args.quick, extra=res,
                       goal={"gold in answer": ">= 0.80 docs, >= 0.85 SQuAD", "words per answer": "<= 80",
                             "right file": ">= 0.90"}.get(target, ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
