"""Fit every weight and threshold of `ask`'s answer model, and report it on corpora the fit did not see.

  python -m benchmarks.fit_answers            # build the stores, compute the rows, fit, write lm/rag/params.json
  python -m benchmarks.fit_answers --from-rows  # refit from the committed rows (no models, seconds)

Question sets (benchmarks/data/questions/*.jsonl, answers verbatim in their sources, questions
paraphrased): this project's README (projdocs), the long descriptions shipped in three installed
packages' metadata (sitedocs: pytest-timeout, xxhash, threadpoolctl; tqdm, orjson, psutil and bm25s are
in the store as distractors), squad2-rhine's answerable questions (squad), SciFact abstracts
(scifact, a 600-record store). Off-topic rows: offtopic.jsonl (other libraries and topics, each
asked of the store whose vocabulary it shares), and each corpus's questions asked of another store
(projdocs <-> sitedocs, squad -> scifact, scifact -> rhine). Rows are computed with the bundled
MiniLM and the collections' BM25, exactly as `ask` computes them (lm.rag.rows), written to
benchmarks/data/answer_rows.jsonl.gz; lm/rag/params.json records the data, the date and the
leave-one-corpus-out scores (lm.rag.fit).
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import sys
from pathlib import Path

from benchmarks._shared_answers import build_answer_stores
from benchmarks.common import ROOT, WORK

QDIR = ROOT / "benchmarks" / "data" / "questions"
ROWS = ROOT / "benchmarks" / "data" / "answer_rows.jsonl.gz"
SPEC = json.loads((QDIR / "corpora.json").read_text(encoding="utf-8"))
STORES: dict[str, str] = SPEC["corpora"]
CROSS: dict[str, str] = SPEC["cross"]
CROSS_MAX = 60  # questions of a corpus asked of another store (off-topic rows)


def build_stores(path: Path) -> None:
    build_answer_stores(path, SPEC)


def load_questions() -> list[dict]:
    qs: list[dict] = []
    for corpus in STORES:
        own = [json.loads(x) for x in (QDIR / f"{corpus}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        qs += [{**q, "corpus": corpus, "store": STORES[corpus], "kind": "answerable"} for q in own]
        qs += [{"question": q["question"], "answers": [], "corpus": corpus, "store": STORES[CROSS[corpus]],
                "kind": "offtopic"} for q in own[:CROSS_MAX]]
    for x in (QDIR / "offtopic.jsonl").read_text(encoding="utf-8").splitlines():
        if x.strip():
            q = json.loads(x)
            qs.append({"question": q["question"], "answers": [], "corpus": "offtopic", "store": q["store"], "kind": "offtopic"})
    return qs


def _embed_with(emb):
    import numpy as np

    return lambda texts: np.stack([emb.embed_query(t) for t in texts])  # (n, d) unit rows


def compute_rows(store_path: Path) -> list[dict]:
    from lm.rag.evidence import term_stats
    from lm.rag.fit import SHAPE
    from lm.rag.rows import question_row
    from retrieval.store.docstore import DocStore

    rows = []
    with DocStore.open(store_path, create=False, read_only=True) as s:
        stats = {c: term_stats(s, c) for c in set(STORES.values())}
        embs = {c: s.embedder_for(s.collection(c)) for c in stats}
        for i, q in enumerate(load_questions()):
            hits = s.search(q["question"], k=5, mode="hybrid", collection=q["store"])
            emb = embs[q["store"]]
            rows.append(question_row(q, hits, stats[q["store"]], _embed_with(emb), SHAPE["max_embed"]))
            if i % 50 == 0:
                print(f"{i} questions", file=sys.stderr, flush=True)
    return rows


def read_rows(path: Path = ROWS) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def write_rows(rows: list[dict], path: Path = ROWS) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as raw:  # mtime 0: the same rows give the same bytes
        raw.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8"))


def fit_all(rows: list[dict], date: str) -> tuple[dict, dict]:
    from lm.rag import fit

    held = fit.leave_one_out(rows)
    model = fit.fit(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[f"{r['corpus']}/{r['kind']}@{r['store']}"] = counts.get(f"{r['corpus']}/{r['kind']}@{r['store']}", 0) + 1
    info = {"date": date, "command": "python -m benchmarks.fit_answers",
            "data": {"rows": str(ROWS.relative_to(ROOT)), "rows_sha256": hashlib.sha256(ROWS.read_bytes()).hexdigest(),
                     "questions": counts},
            "held_out": held, "in_sample": fit.score(rows, model)}
    return model, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-rows", action="store_true", help="refit from the committed rows")
    ap.add_argument("--date", default=None, help="the date recorded (default: today, UTC)")
    ap.add_argument("--out", default=None, help="write the parameters here instead of lm/rag/params.json")
    args = ap.parse_args(argv)
    from lm.rag import params

    if not args.from_rows:
        store = WORK / "answers" / "store"
        store.parent.mkdir(parents=True, exist_ok=True)
        build_stores(store)
        write_rows(compute_rows(store))
    date = args.date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    model, info = fit_all(read_rows(), date)
    params.dump(model, info, Path(args.out) if args.out else params.PATH)
    print(json.dumps(info["held_out"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
