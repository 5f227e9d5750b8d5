"""Answers you can trust, measured on squad2-rhine (issue 12): `knnrag ask`'s answer() end to end.

For each mode (extractive = the default with the bundled LM; generate; the old `ask` baseline =
generate with no abstention model) it reports, on answerable questions, mean SQuAD token F1 and
exact match (an abstention scores 0) and the share answered; the share citing the gold paragraph;
the abstention rate on SQuAD's unanswerable questions; the abstention rate on off-topic questions
(the same questions asked of stores built from other text: this project's docs, CACM abstracts);
and seconds per question. The abstention model and the phrase weights were fitted on the
even-numbered paragraphs, so the odd ("held-out") rows are the honest ones.

  python -m benchmarks answers [--every 2] [--generate-sample 3] [--json OUT]
  python -m benchmarks answers --quick     (every 10th question, 10 off-topic, no generate sample)

The store is built once under .bench/store (git-ignored) and reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks._shared_squad import PROJECT_QUESTIONS, build_store, f1, norm, squad
from benchmarks.common import WORK, record

PEER = "answer() with generate mode and no abstention (the plain RAG `ask` baseline), same questions, same store"


def run_mode(store, questions, collection: str, cfg, knnlm) -> list[dict]:
    from lm.rag.answer import answer

    out = []
    for q in questions:
        t0 = time.perf_counter()
        first: list[float] = []
        res = answer(q["question"], store=store, knnlm=knnlm, collection=collection, config=cfg,
                     on_token=lambda piece, first=first, t0=t0: first.append(time.perf_counter() - t0) if not first else None)
        dt = time.perf_counter() - t0
        cited = [c.source for c in res.citations if c.cited]
        out.append({"id": q["id"], "impossible": q["impossible"], "held_out": int(q["file"][6:9]) % 2 == 1,
                    "answered": res.grounded, "answer": res.answer if res.grounded else "",
                    "f1": f1(res.answer, q["answers"]) if res.grounded and q["answers"] else 0.0,
                    "em": float(res.grounded and any(norm(res.answer) == norm(g) for g in q["answers"])),
                    "gold_cited": any(c.endswith("/" + q["file"]) for c in cited), "seconds": dt,
                    "first_token_s": first[0] if first else dt,
                    "confidence": res.confidence, "mode": res.mode})
    return out


def compare_scorers(store, questions, n: int) -> dict:
    """Span scorers on the same top sentence: the text-feature scorer (the default) against the
    LM's log p(span | question, sentence) and its PMI against log p(span | sentence)."""
    import numpy as np

    from lm.models import load_lm
    from lm.rag.evidence import gather, term_stats
    from lm.rag.extract import candidate_table, linear_scores
    from lm.rag.lm_scorer import span_log_probs

    lm = load_lm(None)
    emb = store.embedder_for(store.collection("rhine"))
    stats = term_stats(store, "rhine")
    tot = {"text_features": 0.0, "lm_conditional": 0.0, "lm_pmi": 0.0, "text_plus_0.3_lm": 0.0}
    secs = []
    for q in questions[:n]:
        hits = store.search(q["question"], k=5, collection="rhine")
        ev = gather(q["question"], hits, lambda t: np.stack([emb.embed_query(x) for x in t]), stats)
        table = candidate_table(ev, n_sentences=1)
        if not table:
            continue
        s = ev.sentences[0]
        cands: dict[str, float] = {}
        for c, sc in zip(table, linear_scores(table)):
            cands[c.span.text] = max(float(sc), cands.get(c.span.text, -1e9))
        top = sorted(cands, key=lambda c: -cands[c])[:16]
        h = np.array([cands[c] for c in top])
        t0 = time.perf_counter()
        cond = span_log_probs(lm, s.span.text, q["question"], top)
        pmi = cond - span_log_probs(lm, s.span.text, None, top)
        secs.append(time.perf_counter() - t0)
        for name, sc in (("text_features", h), ("lm_conditional", cond), ("lm_pmi", pmi), ("text_plus_0.3_lm", h + 0.3 * cond)):
            tot[name] += f1(top[int(np.argmax(sc))], q["answers"])
    k = max(1, min(n, len(questions)))
    return {"n": k, **{name: round(v / k, 3) for name, v in tot.items()}, "lm_seconds_per_question": round(statistics.median(secs), 2)}


def summarise(rows: list[dict], off: list[dict]) -> dict:
    ans = [r for r in rows if not r["impossible"]]
    imp = [r for r in rows if r["impossible"]]

    def mean(xs):
        return round(sum(xs) / len(xs), 3) if xs else None

    return {"answerable": len(ans), "f1": mean([r["f1"] for r in ans]), "em": mean([r["em"] for r in ans]),
            "answered": mean([float(r["answered"]) for r in ans]),
            "gold_cited": mean([float(r["gold_cited"]) for r in ans]),
            "unanswerable_abstained": mean([float(not r["answered"]) for r in imp]),
            "off_topic": len(off), "off_topic_abstained": mean([float(not r["answered"]) for r in off]),
            "median_s": round(statistics.median([r["seconds"] for r in rows + off]), 3) if rows + off else None,
            "median_first_token_s": round(statistics.median([r["first_token_s"] for r in rows + off]), 3) if rows + off else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=str(WORK / "store"))
    ap.add_argument("--every", type=int, default=2, help="use every Nth squad2-rhine question (CPU time)")
    ap.add_argument("--off-topic", type=int, default=60, help="off-topic questions per other store")
    ap.add_argument("--generate-sample", type=int, default=3, help="questions for generate / baseline (~1 min each here)")
    ap.add_argument("--scorers", type=int, default=0, help="also compare span scorers (text features vs LM) on N questions")
    ap.add_argument("--only-scorers", action="store_true", help="run only the span-scorer comparison")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="every 10th question, 10 off-topic per store, no generate sample")
    args = ap.parse_args(argv)
    if args.quick:
        args.every, args.off_topic, args.generate_sample = 10, 10, 0
    from lm.knnlm import KNNLM
    from lm.rag.answer import RagConfig
    from retrieval.store.docstore import DocStore

    store_path = Path(args.store)
    build_store(store_path)
    qs = [json.loads(x) for x in (squad() / "questions.jsonl").read_text().splitlines()]
    sub = qs[:: args.every]
    lm_cache: list = []

    def loader():
        if not lm_cache:
            lm_cache.append(KNNLM.load(None, None))
        return lm_cache[0]

    report: dict = {"questions": len(sub)}
    with DocStore.open(store_path, read_only=True) as s:
        if args.scorers:
            held = [q for q in qs if not q["impossible"] and int(q["file"][6:9]) % 2 == 1][::3]
            report["scorers"] = compare_scorers(s, held, args.scorers)
            print(json.dumps(report["scorers"]), file=sys.stderr)
            if args.only_scorers:
                print(json.dumps(report, indent=1))
                return 0
        cfg = RagConfig()
        rows = run_mode(s, sub, "rhine", cfg, loader)
        off = [r for c, part in (("projdocs", qs[0::7]), ("cacm", qs[3::7]))
               for r in run_mode(s, part[: args.off_topic], c, cfg, loader)]
        report["extractive"] = {"all": summarise(rows, off),
                                "held_out": summarise([r for r in rows if r["held_out"]], [r for r in off if r["held_out"]])}
        proj = []
        for q, want in PROJECT_QUESTIONS:
            from lm.rag.answer import answer

            res = answer(q, store=s, knnlm=loader, collection="projdocs", config=cfg)
            sent = res.answer_span.sentence if res.answer_span else ""
            proj.append({"question": q, "answered": res.grounded, "answer": res.answer[:120],
                         "expected_in_sentence": want.lower() in sent.lower(),
                         "expected_in_answer": res.grounded and want.lower() in res.answer.lower()})
        report["project_docs"] = proj
        print(json.dumps(report["extractive"], indent=1), file=sys.stderr)
        n = args.generate_sample
        if n:
            sample = [q for q in sub if not q["impossible"]][:n]
            gen = run_mode(s, sample, "rhine", RagConfig(answer_mode="generate", max_new_tokens=64), loader)
            base = run_mode(s, sample, "rhine", RagConfig(answer_mode="generate", abstain_threshold=0.0), loader)
            ext = [r for r in rows if r["id"] in {q["id"] for q in sample}]
            report["sample"] = {"n": n, "extractive": summarise(ext, []), "generate": summarise(gen, []),
                                "baseline_ask": summarise(base, []),
                                "answers": [{"extractive": a["answer"], "generate": b["answer"][:200], "baseline": c["answer"][:200]}
                                            for a, b, c in zip(ext, gen, base)]}
    out = json.dumps(report, indent=1)
    print(out)
    if args.json:
        Path(args.json).write_text(out)
    _record(report, args.quick)
    return 0


def _record(report: dict, quick: bool) -> None:
    held = report["extractive"]["held_out"]
    base = report.get("sample", {}).get("baseline_ask", {})
    extra = {"questions": report["questions"], "held_out": held}
    record("answers", "extractive `ask` token F1 on held-out answerable squad2-rhine questions (goal: >= 0.60)",
           held["f1"], base.get("f1"), "F1", peer_name="plain generate ask (sample)", goal=">= 0.60", extra=extra, quick=quick)
    record("answers", "`ask` cites the gold paragraph, held out (goal: >= 85%)", held["gold_cited"],
           base.get("gold_cited"), "share", peer_name="plain generate ask (sample)", goal=">= 0.85", extra=extra, quick=quick)
    record("answers", "`ask` abstains on off-topic questions (goal: >= 90%)", held["off_topic_abstained"],
           base.get("off_topic_abstained"), "share", peer_name="plain generate ask (sample)", goal=">= 0.90",
           extra=extra, quick=quick)


if __name__ == "__main__":
    sys.exit(main())
