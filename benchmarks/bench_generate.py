"""Generate mode on squad2-rhine (issue 12): streaming, repetition guards and provenance citations.

The collection's kNN-LM datastore is built from the same chunks (`knnrag index --knn`, here
lm.knn_index.sync with the bundled SmolLM2-135M). For a sample of answerable questions it asks
answer() in generate mode with that datastore ("knn") and, as the peer in the same run, with the
plain LM ("plain", no datastore, so citations can only come from word overlap), and reports:
the first streamed piece (warm: one untimed question first; median), seconds per answer, SQuAD
token F1 of the answer (markers removed), the share of answers whose top chunk is the gold
paragraph by provenance and by overlap, the LM's own [n] citations of the gold paragraph, and
how often provenance and overlap pick the same chunk (pooled over sentences, and per answer).
Abstention is off (threshold 0) so every question is generated.

  nice python -m benchmarks generate [--n 6] [--max-new-tokens 64] [--context-tokens N] [--no-plain] [--json OUT]
  python -m benchmarks generate --quick      (2 questions, 24 new tokens)

The store and its datastore are built once under .bench/gen-store (git-ignored) and reused.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

from benchmarks._shared_squad import squad
from benchmarks.common import WORK, record
from lm.rag.rows import f1  # SQuAD token F1

PEER = "the same generate-mode answers with the plain LM (no datastore: citations from word overlap only)"
COLL = "rhine"


def build(path: Path) -> None:
    from lm.knn_index import datastore_dir, sync
    from lm.models import load_lm
    from retrieval.store.docstore import DocStore

    with DocStore.open(path) as s:
        if COLL not in {c["name"] for c in s.list_collections()}:
            s.index_paths([str(squad() / "docs")], collection=COLL)
    out = datastore_dir(path, COLL)
    if not (out / "manifest.json").is_file():
        with DocStore.open(path, read_only=True) as s:
            print(json.dumps(sync(s, COLL, load_lm(None), out)), file=sys.stderr)


def top_chunk(weights: dict[str, float]) -> str | None:
    return max(weights, key=weights.__getitem__) if weights else None


def _timed_generate(entered: list[float]):
    """lm.generate.generate, noting when it is entered (retrieval and prompt fitting are done)."""
    import lm.generate as g

    inner = g.generate

    def wrapped(*a, **kw):
        entered.append(time.perf_counter())
        return inner(*a, **kw)

    return g, inner, wrapped


def one(store, q: dict, knnlm, cfg, gold_of: dict[str, str]) -> dict:
    from lm.rag.answer import answer

    entered: list[float] = []
    mod, inner, wrapped = _timed_generate(entered)
    mod.generate = wrapped
    t0 = time.perf_counter()
    first: list[float] = []
    try:
        res = answer(q["question"], store=store, knnlm=knnlm, collection=COLL, config=cfg,
                     on_token=lambda piece: first.append(time.perf_counter()) if not first else None)
    finally:
        mod.generate = inner
    dt = time.perf_counter() - t0
    t_first = first[0] if first else t0 + dt
    t_gen = entered[0] if entered else t0
    gold = q["file"]
    prov: dict[str, float] = collections.defaultdict(float)
    over: dict[str, float] = collections.defaultdict(float)
    for sp in res.spans:
        if sp.provenance_chunk is not None and sp.provenance_weight > 0:
            prov[sp.provenance_chunk] += sp.provenance_weight * sp.tokens
        if sp.overlap_chunk is not None:
            over[sp.overlap_chunk] += sp.overlap_score
    lm_cited = [c.source for c in res.citations if c.basis == "lm"]
    text = re.sub(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]", "", res.answer)
    return {"id": q["id"], "answer": res.answer[:300], "f1": f1(text, q["answers"]), "seconds": dt,
            "first_token_s": t_first - t0, "before_lm_s": t_gen - t0, "lm_first_token_s": t_first - t_gen,
            "answer_tokens": len(knnlm.lm.tokenizer(res.answer)["input_ids"]), "prompt_tokens": res.prompt_tokens,
            "gold_by_provenance": gold_of.get(top_chunk(prov) or "") == gold,
            "gold_by_overlap": gold_of.get(top_chunk(over) or "") == gold,
            "gold_by_lm": any(c.endswith("/" + gold) for c in lm_cited),
            "sentences": len(res.spans), "provenance_sentences": sum(sp.basis == "provenance" for sp in res.spans),
            "compared": sum(sp.agree is not None for sp in res.spans),
            "agreed": sum(bool(sp.agree) for sp in res.spans), "agreement": res.agreement,
            "span_weights": [[sp.basis, sp.provenance_weight, gold_of.get(sp.provenance_chunk or ""),
                              gold_of.get(sp.overlap_chunk or "")] for sp in res.spans]}


def summary(rows: list[dict]) -> dict:
    def mean(k):
        return round(sum(float(r[k]) for r in rows) / len(rows), 3) if rows else None

    compared = sum(r["compared"] for r in rows)
    per = [r["agreement"] for r in rows if r["agreement"] is not None]
    return {"n": len(rows), "median_first_token_s": round(statistics.median(r["first_token_s"] for r in rows), 2),
            "max_first_token_s": round(max(r["first_token_s"] for r in rows), 2),
            "median_before_lm_s": round(statistics.median(r["before_lm_s"] for r in rows), 2),
            "median_lm_first_token_s": round(statistics.median(r["lm_first_token_s"] for r in rows), 2),
            "median_s_per_answer": round(statistics.median(r["seconds"] for r in rows), 2),
            "median_answer_tokens": statistics.median(r["answer_tokens"] for r in rows), "f1": mean("f1"),
            "gold_by_provenance": mean("gold_by_provenance"), "gold_by_overlap": mean("gold_by_overlap"),
            "gold_by_lm_marker": mean("gold_by_lm"),
            "provenance_sentence_share": round(sum(r["provenance_sentences"] for r in rows)
                                               / max(1, sum(r["sentences"] for r in rows)), 3),
            "agreement_sentences": round(sum(r["agreed"] for r in rows) / compared, 3) if compared else None,
            "compared_sentences": compared,
            "agreement_mean_per_answer": round(sum(per) / len(per), 3) if per else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=str(WORK / "gen-store"))
    ap.add_argument("--n", type=int, default=6, help="answerable questions (spread over the paragraphs); ~30-90 s each here")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-LM peer")
    ap.add_argument("--context-tokens", type=int, default=None, help="prompt + answer budget (default: answer()'s)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="2 questions, 24 new tokens (the store and datastore are still built once)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.max_new_tokens = 2, 24
    from lm.knn_index import datastore_dir
    from lm.knnlm import KNNLM
    from lm.rag.answer import RagConfig
    from retrieval.store.docstore import DocStore

    path = Path(args.store)
    build(path)
    qs = [q for q in map(json.loads, (squad() / "questions.jsonl").read_text().splitlines()) if not q["impossible"]]
    step = max(1, len(qs) // (args.n + 1))
    sample, warm = qs[step::step][: args.n], qs[0]
    knn = KNNLM.load(None, datastore=datastore_dir(path, COLL))
    runs = {"knn": knn} if args.no_plain else {"knn": knn, "plain": KNNLM(knn.lm)}
    cfg = RagConfig(answer_mode="generate", abstain_threshold=0.0, max_new_tokens=args.max_new_tokens,
                    context_tokens=args.context_tokens)
    report: dict = {"k": knn.config.k, "lambda": knn.config.lambda_, "per_token_lambda": knn.config.lambda_fn is not None,
                    "datastore_entries": knn.store.count if knn.store is not None else 0,
                    "max_new_tokens": args.max_new_tokens, "context_tokens": args.context_tokens}
    with DocStore.open(path, read_only=True) as s:
        gold_of = {h.id: Path(h.source).name for h in s.get(_all_ids(s), collection=COLL)}
        rows: dict[str, list[dict]] = {name: [] for name in runs}
        for model in runs.values():
            one(s, warm, model, cfg, gold_of)  # warm: torch kernels, the embedder, the FAISS index
        for q in sample:  # interleaved, so load on the machine hits both alike
            for name, model in runs.items():
                rows[name].append(one(s, q, model, cfg, gold_of))
                print(name, json.dumps(rows[name][-1])[:400], file=sys.stderr)
    for name in runs:
        report[name] = summary(rows[name])
    report["rows"] = rows
    text = json.dumps(report, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    if args.json:
        Path(args.json).write_text(text)
    k, p = report["knn"], report.get("plain", {})
    record("generate", "generate mode: first streamed token, warm, median seconds (goal: <= 3 s)", k["median_first_token_s"],
           p.get("median_first_token_s"), "s", peer_name="plain LM", higher_is_better=False, goal="<= 3 s",
           extra={"n": k["n"], "max_first_token_s": k["max_first_token_s"]}, quick=args.quick)
    record("generate", "generate mode: answer's top chunk is the gold paragraph by provenance", k["gold_by_provenance"],
           p.get("gold_by_overlap"), "share", peer_name="plain LM, word overlap",
           extra={"n": k["n"], "agreement_sentences": k["agreement_sentences"]}, quick=args.quick)
    return 0


def _all_ids(store) -> list[str]:
    from lm.knn_index import chunk_texts

    return sorted(chunk_texts(store, COLL))


if __name__ == "__main__":
    raise SystemExit(main())
