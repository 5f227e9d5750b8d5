"""Where our BM25 differs from bm25s, one difference at a time, on SciFact and CACM (no embeddings).

usage: python -m benchmarks bm25_variants [--work .bench/transfer] [--json OUT] [--only GROUP,GROUP]
       python -m benchmarks bm25_variants --quick       (the shipped default and bm25s only)

Every variant is scored in-process with the same Lucene BM25 as retrieval/index/bm25_index.py
(checked: the "ours" row equals `knnrag search --mode bm25` on a store built by `knnrag index`), on
the per-record texts that `knnrag index` gives BM25 (retrieval/store/indexing.py
`_record_bm25_texts`: title and text as one document, the title counted `title_weight` times; a
record with a title and no text is its title, counted once). Choosing uses SciFact train and CACM,
reporting SciFact test too; a setting's regret on a dataset is its distance to that dataset's best
among the rows of its group (the rows that change one thing against the same base).
The bm25s row is bm25s itself (k1 1.5, b 0.75, its tokeniser, title + " " + text).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import sparse

from benchmarks import _shared_beir
from benchmarks._shared_beir import dataset
from benchmarks.common import record
from retrieval.index import bm25_index
from retrieval.index import stopwords as stopwords_mod
from retrieval.ingest.preprocess import normalize_whitespace

PEER = "bm25s (PyStemmer English stemmer, its defaults k1=1.5 b=0.75) on the same records and queries"
_ndcg = _shared_beir.ndcg

SPLITS = (("scifact", "train.tsv"), ("scifact", "test.tsv"), ("cacm", "test.tsv"))
CHOOSE = ("scifact/train", "cacm/test")


def _names() -> list[str]:
    return list(dict.fromkeys(n for n, _ in SPLITS))


@dataclass(frozen=True)
class Variant:
    """One BM25 setting: tokeniser options (bm25_index.TokenizerConfig fields) plus scoring."""

    k1: float = 1.2
    b: float = 0.75
    title_weight: int = 3
    title_in_length: bool = True  # False: the repeated title adds term frequency, not length (BM25F-like)
    dedupe_query: bool = False
    idf: str = "lucene"  # lucene log(1 + (N - df + .5) / (df + .5)); atire log(N / df); bm25+ lucene idf, delta 0.5 on tf
    tok: tuple = ()  # tokenizer() keyword pairs, e.g. (("stopwords", "en"),)
    chunks: bool = False  # one BM25 document per chunk (the document scores by its best chunk)


def records(name: str) -> tuple[list[str], list[str | None], list[str]]:
    """(doc ids, titles, texts) as sources.py reads a BEIR corpus (a title-only record is its text)."""
    ids, titles, texts = [], [], []
    for ln in (dataset(name) / "corpus.jsonl").read_text().splitlines():
        if not ln.strip():
            continue
        r = json.loads(ln)
        title, text = (r.get("title") or "").strip() or None, r.get("text") or ""
        if not text.strip() and title:
            text, title = title, None
        ids.append(str(r["_id"]))
        titles.append(title)
        texts.append(normalize_whitespace(text))
    return ids, titles, texts


def queries(name: str, qrels: str) -> list[tuple[str, str]]:
    want = {ln.split("\t")[0] for ln in (dataset(name) / "qrels" / qrels).read_text().splitlines()[1:] if ln.strip()}
    qs = [json.loads(ln) for ln in (dataset(name) / "queries.jsonl").read_text().splitlines() if ln.strip()]
    return [(q["_id"], q["text"]) for q in qs if q["_id"] in want]


def chunk_records(name: str, work: Path) -> tuple[list[str], list[str | None], list[str]]:
    """(doc id, title, index_text) of every chunk of the store bench_transfer built in WORK: BM25
    over chunks, as knnrag did before one record became one BM25 document (98f53cb). The chunk's
    index_text holds the title once already."""
    import sqlite3

    _, titles, _ = records(name)
    title_of = dict(zip(records(name)[0], titles))
    conn = sqlite3.connect(work / name / "store" / name / "chunks.sqlite")
    rows = conn.execute("SELECT doc_id, index_text FROM chunks ORDER BY id").fetchall()
    return [d for d, _ in rows], [title_of[d] for d, _ in rows], [t for _, t in rows]


class Tokenised:
    """A dataset's titles and texts tokenised once per tokeniser; BM25 assembled per variant.
    Rows sharing a doc id (chunks) score the document by their best row."""

    def __init__(self, name: str, tok: Callable[[str], list[str]], rows: tuple | None = None) -> None:
        ids, titles, texts = rows or records(name)
        self.ids = ids
        self.chunked = len(set(ids)) < len(ids)
        self.vocab: dict[str, int] = {}
        self.title = self._counts([tok(normalize_whitespace(t)) if t else [] for t in titles])  # (D, V)
        self.text = self._counts([tok(t) for t in texts])  # (D, V)
        self.tok = tok
        v = len(self.vocab)
        self.title.resize((len(ids), v))
        self.text.resize((len(ids), v))

    def _counts(self, lists: list[list[str]]) -> sparse.csr_matrix:
        rows, cols = [], []
        for i, toks in enumerate(lists):
            for t in toks:
                rows.append(i)
                cols.append(self.vocab.setdefault(t, len(self.vocab)))
        m = sparse.coo_matrix((np.ones(len(rows), np.float64), (rows, cols)), shape=(len(lists), max(len(self.vocab), 1)))
        return m.tocsr()

    def scores(self, v: Variant) -> sparse.csc_matrix:
        """Lucene BM25 weight of every (doc, term), as bm25_index._csc computes it. (D, V)"""
        w = v.title_weight - 1 if self.chunked else v.title_weight  # a chunk's text holds the title once
        tf = (self.text + w * self.title).tocsr()  # (D, V)
        dl = np.asarray(tf.sum(axis=1)).ravel() if v.title_in_length else np.asarray((self.text + self.title).sum(axis=1)).ravel()
        real = dl > 0
        n, avgdl = int(real.sum()), float(dl[real].mean())
        df = np.diff(tf.tocsc().indptr).astype(np.float64)  # (V,)
        idf = np.log(n / np.maximum(df, 1)) if v.idf == "atire" else np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        coo = tf.tocoo()
        w = idf[coo.col] * (coo.data / (coo.data + v.k1 * (1.0 - v.b + v.b * dl[coo.row] / avgdl)) + (0.5 if v.idf == "bm25+" else 0.0))
        return sparse.csr_matrix((w, (coo.row, coo.col)), shape=tf.shape)

    def run(self, v: Variant, qs: list[tuple[str, str]], k: int = 100) -> list[list[str]]:
        s = self.scores(v).T.tocsr()  # (V, D)
        rows, cols = [], []
        for i, (_, q) in enumerate(qs):
            toks = self.tok(q)
            toks = list(dict.fromkeys(toks)) if v.dedupe_query else toks
            for t in toks:
                if t in self.vocab:
                    rows.append(i)
                    cols.append(self.vocab[t])
        qm = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(qs), s.shape[0]))  # (Q, V)
        full = np.asarray((qm @ s).todense())  # (Q, D)
        if self.chunked:  # a document's score is its best chunk's
            doc_ids = sorted(set(self.ids))
            col = {d: i for i, d in enumerate(doc_ids)}
            pos = np.array([col[d] for d in self.ids])
            best = np.zeros((len(qs), len(doc_ids)))
            np.maximum.at(best.T, pos, full.T)
            full, ids = best, doc_ids
        else:
            ids = self.ids
        out = []
        for row in full:
            cand = np.flatnonzero(row > 0)
            if len(cand) > k:
                cand = cand[np.argpartition(-row[cand], k - 1)[:k]]
            out.append([ids[j] for j in cand[np.argsort(-row[cand], kind="stable")]])
        return out


def evaluate(name: str, qrels: str, qs: list[tuple[str, str]], ranked: list[list[str]]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for (qid, _), docs in zip(qs, ranked):
            f.write(json.dumps({"query_id": qid, "hits": [{"doc_id": d} for d in docs]}) + "\n")
    nd = _ndcg().evaluate(f.name, str(dataset(name) / "qrels" / qrels))[0]
    Path(f.name).unlink()
    return round(nd, 4)


def per_query(name: str, qrels: str, qs: list[tuple[str, str]], ranked: list[list[str]]) -> np.ndarray:
    """nDCG@10 of each query, as ndcg.py computes the mean (binary qrels). (Q,)"""
    rel = _ndcg().load_qrels(str(dataset(name) / "qrels" / qrels))
    out = []
    for (qid, _), docs in zip(qs, ranked):
        r = rel[qid]
        dcg = sum(r.get(d, 0) / np.log2(i + 2) for i, d in enumerate(docs[:10]))
        idcg = sum(v / np.log2(i + 2) for i, v in enumerate(sorted(r.values(), reverse=True)[:10]))
        out.append(dcg / idcg if idcg else 0.0)
    return np.asarray(out)


def compare(pairs: list[tuple[str, Variant, Variant]]) -> dict:
    """Paired differences B - A per split, with a 95% bootstrap interval over queries (10,000
    resamples): what two datasets of 809 and 52 queries can tell apart."""
    rng = np.random.default_rng(0)
    res: dict = {}
    toks: dict = {}
    for label, va, vb in pairs:
        row = {}
        for n, q in SPLITS:
            qs = queries(n, q)
            d = []
            for v in (va, vb):
                if v.tok not in toks:
                    toks[v.tok] = {m: Tokenised(m, tokenizer(**dict(v.tok))) for m in _names()}
                d.append(per_query(n, q, qs, toks[v.tok][n].run(v, qs)))
            diff = d[1] - d[0]  # (Q,)
            boot = diff[rng.integers(0, len(diff), (10000, len(diff)))].mean(axis=1)
            row[f"{n}/{q.split('.')[0]}"] = [round(float(diff.mean()), 4), round(float(np.quantile(boot, 0.025)), 4),
                                             round(float(np.quantile(boot, 0.975)), 4)]
        res[label] = row
        print(f"{label}: {row}", file=sys.stderr)
    return res


EN = (("stopwords", "en"), ("pattern", "bm25s"))  # the previous tokeniser, bm25s's
PAIRS = [("stopwords en -> en_plus", Variant(tok=(("stopwords", "en"),)), Variant()),
         ("pattern bm25s -> words", Variant(tok=(("pattern", "bm25s"),)), Variant()),
         ("previous default -> today's", Variant(tok=EN), Variant()),
         ("bm25s's settings -> today's", Variant(k1=1.5, title_weight=1, tok=EN), Variant()),
         ("title x3 -> x4", Variant(), Variant(title_weight=4)),
         ("idf lucene -> atire", Variant(), Variant(idf="atire")),
         ("k1 1.2 -> 1.5 (bm25s)", Variant(), Variant(k1=1.5))]


def bm25s_row() -> dict[str, float]:
    import bm25s
    import Stemmer

    out = {}
    stem = Stemmer.Stemmer("english")
    for name in _names():
        ids, texts = [], []
        for ln in (dataset(name) / "corpus.jsonl").read_text().splitlines():
            if ln.strip():
                r = json.loads(ln)
                ids.append(str(r["_id"]))
                texts.append(((r.get("title") or "") + " " + (r.get("text") or "")).strip())
        bm = bm25s.BM25()
        bm.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
        for n2, qrels in SPLITS:
            if n2 != name:
                continue
            qs = queries(name, qrels)
            res, _ = bm.retrieve(bm25s.tokenize([t for _, t in qs], stopwords="en", stemmer=stem, show_progress=False),
                                 k=100, show_progress=False)
            out[f"{name}/{qrels.split('.')[0]}"] = evaluate(name, qrels, qs, [[ids[j] for j in row] for row in res])
    return out


PATTERNS = {**bm25_index.PATTERNS, "word1": r"(?u)\b\w+\b", "alnum2": r"(?u)[^\W\d_]{2,}|\d{2,}"}


def tokenizer(stopwords: str = "en_plus", stemmer: str = "english", pattern: str = "words", fold: bool = False):
    """bm25_index.Tokenizer with another stopword list, stemmer or token pattern, or accents folded."""
    import re
    import unicodedata

    if stopwords == "sklearn":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS as stop
    else:
        stop = stopwords_mod.LISTS["" if stopwords == "none" else stopwords]
    t = bm25_index.Tokenizer(None if stemmer == "none" else stemmer, stop)
    split = re.compile(PATTERNS[pattern]).findall
    fold_fn = (lambda s: "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))) if fold else None
    t._split = (lambda s: split(fold_fn(s))) if fold_fn else split
    return t


BASE = Variant()  # today's default: en_plus stopwords, "words" tokens, English stemmer, k1 1.2, b 0.75, title x3
GROUPS: dict[str, list[tuple[str, Variant]]] = {
    "shipped": [("shipped default", BASE)],
    "as bm25s": [("k1 1.5 title x1 stopwords en (= bm25s)", Variant(k1=1.5, title_weight=1, tok=EN)),
                 ("previous default (stopwords en)", replace(BASE, tok=EN)),
                 ("issue-time default (k1 0.75 b 0.5 x1 en, chunks)", Variant(k1=0.75, b=0.5, title_weight=1, tok=EN, chunks=True))],
    "k1/b": [(f"k1 {k1} b {b}", replace(BASE, k1=k1, b=b)) for k1 in (0.9, 1.2, 1.5, 2.0) for b in (0.6, 0.75, 0.9)],
    "title": [(f"title x{w}", replace(BASE, title_weight=w)) for w in (1, 2, 3, 4, 5)]
    + [(f"title x{w} tf only", replace(BASE, title_weight=w, title_in_length=False)) for w in (2, 3, 4)],
    "stopwords": [(f"stopwords {s}", replace(BASE, tok=(("stopwords", s),))) for s in ("en", "en_plus", "sklearn", "none")],
    "stemmer": [(f"stemmer {s}", replace(BASE, tok=(("stemmer", s),))) for s in ("english", "porter", "none")],
    "tokens": [(f"pattern {p}", replace(BASE, tok=(("pattern", p),))) for p in ("words", "bm25s", "word1", "alnum2")]
    + [("fold accents", replace(BASE, tok=(("fold", True),)))],
    "idf": [(f"idf {i}", replace(BASE, idf=i)) for i in ("lucene", "atire", "bm25+")],
    "query": [("query terms repeated", BASE), ("query terms once", replace(BASE, dedupe_query=True))],
    "unit": [("one BM25 document per record", BASE), ("one per chunk, best chunk", replace(BASE, chunks=True))],
    "en x k1/b/title": [(f"en k1 {k1} b {b} x{w}", replace(BASE, k1=k1, b=b, title_weight=w, tok=EN))
                        for k1 in (0.9, 1.2, 1.5) for b in (0.6, 0.75, 0.9) for w in (2, 3, 4)],
    "en_plus x k1/b/title": [(f"en_plus k1 {k1} b {b} x{w}", replace(BASE, k1=k1, b=b, title_weight=w))
                             for k1 in (0.9, 1.2, 1.5) for b in (0.6, 0.75, 0.9) for w in (2, 3, 4)],
}


def measure(only: list[str], work: Path | None) -> dict:
    toks: dict[tuple, dict[str, Tokenised]] = {}
    qcache = {(n, q): queries(n, q) for n, q in SPLITS}
    res: dict = {"bm25s": bm25s_row(), "groups": {}}
    print(f"bm25s: {res['bm25s']}", file=sys.stderr)
    for group, rows in GROUPS.items():
        if only and group not in only:
            continue
        table = {}
        for label, v in rows:
            key = (v.tok, v.chunks)
            if v.chunks and work is None:
                continue
            if key not in toks:
                tk = tokenizer(**dict(v.tok))
                has = [n for n in _names() if not v.chunks or (work / n / "store").is_dir()]  # chunks need a store
                toks[key] = {n: Tokenised(n, tk, chunk_records(n, work) if v.chunks else None) for n in has}
            table[label] = {f"{n}/{q.split('.')[0]}": evaluate(n, q, qcache[(n, q)], toks[key][n].run(v, qcache[(n, q)]))
                            if n in toks[key] else float("nan") for n, q in SPLITS}
            print(f"{group} | {label}: {table[label]}", file=sys.stderr)
        res["groups"][group] = table
    return res


def markdown(res: dict) -> str:
    cols = [f"{n}/{q.split('.')[0]}" for n, q in SPLITS]
    lines = ["| group | setting | " + " | ".join(cols) + " | worst regret (train, CACM) |", "|---" * (len(cols) + 3) + "|"]
    lines.append("| peer | bm25s defaults | " + " | ".join(f"{res['bm25s'][c]:.4f}" for c in cols) + " | |")
    for group, table in res["groups"].items():
        best = {c: max((r[c] for r in table.values() if r[c] == r[c]), default=0.0) for c in cols}
        for label, r in table.items():
            regret = max(best[c] - r[c] for c in CHOOSE)
            lines.append(f"| {group} | {label} | " + " | ".join(f"{r[c]:.4f}" if r[c] == r[c] else "-" for c in cols) + f" | {regret:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="")
    p.add_argument("--compare", action="store_true", help="only the paired bootstrap intervals of PAIRS")
    p.add_argument("--pydoc", default="", help="also score the sanity-check collection pydoc_collection.py wrote here")
    p.add_argument("--work", default="", help="bench_transfer's WORK folder (its stores' chunks, for the 'unit' rows)")
    p.add_argument("--only", default="", help="comma-separated groups: " + ",".join(GROUPS))
    p.add_argument("--quick", action="store_true", help="only the shipped default against bm25s")
    a = p.parse_args(argv)
    if a.quick:
        a.only = "shipped"
    if a.pydoc:
        global SPLITS
        _shared_beir.EXTRA["pydoc"] = Path(a.pydoc)
        SPLITS = SPLITS + (("pydoc", "test.tsv"),)
    if a.compare:
        res = compare(PAIRS)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    res = measure([g for g in a.only.split(",") if g], Path(a.work) if a.work else None)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    print(markdown(res))
    shipped = res["groups"].get("shipped", {}).get("shipped default")
    for split, ours in (shipped or {}).items():
        record("bm25_variants", f"our BM25 nDCG@10, {split} (goal: not below bm25s)", ours, res["bm25s"][split], "nDCG@10",
               peer_name="bm25s", goal=">= 1.0x", quick=a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
