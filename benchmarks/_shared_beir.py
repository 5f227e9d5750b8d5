"""What the BEIR retrieval benchmarks share (bench_transfer, bench_bm25_variants): the data sets,
their queries and the judge's nDCG scorer.

Not a benchmark itself (no `bench_` prefix).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from benchmarks.common import data_dir, shared_tool

FOLDERS = {"scifact": "beir-scifact", "cacm": "cacm-beir"}
EXTRA: dict[str, Path] = {}  # further collections named on a command line (bench_bm25_variants --pydoc DIR)


def dataset(name: str) -> Path:
    """The BEIR folder of a data set: corpus.jsonl, queries.jsonl, qrels/*.tsv."""
    return EXTRA[name] if name in EXTRA else data_dir(FOLDERS[name])


def ndcg() -> ModuleType:
    """../shared/tools/ndcg.py: the judge's scorer (evaluate(run, qrels) -> nDCG@10, Recall@100, n, missing)."""
    return shared_tool("ndcg")


def queries(data: Path, qrels: str) -> list[tuple[str, str]]:
    """(query id, text) of the queries judged in qrels/QRELS."""
    want = {ln.split("\t")[0] for ln in (data / "qrels" / qrels).read_text().splitlines()[1:] if ln.strip()}
    qs = [json.loads(ln) for ln in (data / "queries.jsonl").read_text().splitlines() if ln.strip()]
    return [(q["_id"], q["text"]) for q in qs if q["_id"] in want]


def write_run(path: Path, qids: list[str], ranked: list[list[str]]) -> None:
    with open(path, "w") as f:
        for qid, docs in zip(qids, ranked):
            f.write(json.dumps({"query_id": qid, "hits": [{"doc_id": d} for d in docs]}) + "\n")


def score(run: Path, data: Path, qrels: str) -> dict:
    nd, rc, n, miss = ndcg().evaluate(str(run), str(data / "qrels" / qrels))
    return {"ndcg@10": round(nd, 4), "recall@100": round(rc, 4), "queries": n, "missing": miss}


def memoise_embeddings(store, coll=None) -> None:
    """Embed each query once across the tuning grid (the grid varies fusion, not the encoder)."""
    emb = store.embedder_for(coll if coll is not None else store.collection("scifact"))
    orig, cache = emb.embed, {}

    def embed(texts, **kw):
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, v in zip(missing, orig(missing, **kw)):
                cache[t] = v
        import numpy as np

        return np.stack([cache[t] for t in texts])

    emb.embed = embed
