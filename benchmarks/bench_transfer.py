"""Hybrid search that transfers: our dense / BM25 / hybrid against peers on SciFact test and CACM,
and the cross-corpus choice of the BM25 and fusion defaults (leave-one-dataset-out).

usage: python -m benchmarks transfer [--work .bench/transfer] [--datasets scifact,cacm]
                                     [--skip-tune] [--skip-peers] [--json OUT]
       python -m benchmarks transfer --quick      (CACM only, no tuning: ~3,200 short records)

- Each dataset is indexed ONCE with `knnrag index` into WORK/<name>/store and reused afterwards.
- Peers, measured in the same run: bm25s (PyStemmer English stemmer, its defaults k1=1.5 b=0.75),
  exact MiniLM (sentence-transformers, the bundled all-MiniLM-L6-v2) flat search with one vector
  per document (title + " " + text; vectors cached in WORK/<name>/peer_dense.npy), and their plain
  RRF (k=60) over the top 100 of each.
- Ours: `knnrag search --queries FILE -k 100 --mode M --json`, scored with ../shared/tools/ndcg.py.
- Tuning (--skip-tune to leave out) re-scores the collection's BM25 postings with other k1/b
  (bm25_index.rescore, no re-indexing) and sweeps the fusion grid on each dataset's tuning split
  (SciFact train qrels, CACM's only qrels). A setting's regret on a dataset is its distance to that
  dataset's best; the chosen setting minimises the worst regret over the datasets (ties: the best
  mean). Leave-one-dataset-out: the setting chosen on the other dataset alone, scored on the held-out one.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._shared_beir import dataset, memoise_embeddings, ndcg, queries, score, write_run
from benchmarks.common import WORK, knnrag_exe, record

PEER = "bm25s, exact MiniLM flat search (sentence-transformers) and their RRF k=60, same queries and qrels"
TUNE_QRELS = {"scifact": "train.tsv", "cacm": "test.tsv"}  # CACM has no train split
TEST_QRELS = "test.tsv"
K1B = [(0.75, 0.5)] + list(itertools.product((0.9, 1.2, 1.5, 2.0), (0.3, 0.5, 0.75)))
ALPHAS = [round(a / 100, 2) for a in range(20, 85, 10)]
NORMS = ("tmm", "minmax", "zscore")
BM25_IN_HYBRID = True


# --------------------------------------------------------------------------- build (once)
def build(work: Path, name: str) -> Path:
    store = work / name / "store"
    done = work / name / "build.json"
    if done.exists() and store.exists() and done.read_text().strip():
        return store
    (work / name).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(done, "w") as f:
        subprocess.run([knnrag_exe(), "index", str(dataset(name) / "corpus.jsonl"), "--store", str(store), "--collection", name,
                        "--json"], stdout=f, check=True)
    print(f"{name}: built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return store


def record_tokens(conn, tok, data: Path, weight: int):
    """BM25 tokens of every chunk as `index_paths` makes them with BM25Config(title_weight=weight)
    (retrieval/store/indexing.py `_record_bm25_texts`: one BM25 document per record, the title
    counted `weight` times), from the chunk rows and the corpus records. Returns (ids, tokens)."""
    import numpy as np

    from retrieval.store import indexing
    from retrieval.types import Chunk, SourceDocument

    recs = {}
    for ln in (data / "corpus.jsonl").read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            recs[str(r["_id"])] = r
    by_doc: dict[str, list] = {}
    for cid, doc_id, it in conn.execute("SELECT id, doc_id, index_text FROM chunks ORDER BY id"):
        by_doc.setdefault(doc_id, []).append((cid, it))
    ids, texts = [], []
    for doc_id, chunks in by_doc.items():
        r = recs[doc_id]
        title, text = (r.get("title") or "").strip() or None, r.get("text") or ""
        if not text.strip() and title:  # as retrieval/ingest/sources.py reads a title-only record
            text, title = title, None
        doc = SourceDocument("", text, "jsonl", "", doc_id, title)
        kept = [Chunk("", "", 0, 0, 1, 1, "", "jsonl", it, doc_id) for _, it in chunks]
        ids += [cid for cid, _ in chunks]
        texts += indexing._record_bm25_texts(doc, kept, weight)
    order = np.argsort(ids)
    return np.asarray(ids, np.int64)[order], [tok(texts[i]) for i in order]


def bm25_index_update(ids, tokens, cfg):
    import numpy as np

    from retrieval.index import bm25_index

    return bm25_index.update(None, np.zeros(0, np.int64), ids, tokens, cfg)


def match_bm25_defaults(store: Path, name: str) -> dict:
    """Give a reused store the BM25 settings of today's defaults, as a fresh build would have them:
    the saved postings re-scored (bm25_index.rescore is exact, O(nnz)), or the chunks re-tokenised
    when the title weight or the tokeniser changed, and the manifest updated."""
    from retrieval.index import bm25_index
    from retrieval.index.bm25_index import BM25Config

    coll = store / name
    manifest = json.loads((coll / "manifest.json").read_text())
    want = BM25Config()
    have = manifest["bm25"]
    retok = ((have.get("title_weight", 1), have.get("stopwords"), have.get("stemmer"), have.get("pattern", "bm25s"))
             != (want.title_weight, want.stopwords, want.stemmer, want.pattern))
    if retok or (have["k1"], have["b"]) != (want.k1, want.b):
        import sqlite3

        conn = sqlite3.connect(coll / "chunks.sqlite")
        if retok:  # re-tokenised as index_paths would
            ids, tokens = record_tokens(conn, bm25_index.tokenizer_for(want), dataset(name), want.title_weight)
        for gdir in sorted(coll.glob("gen-*")):
            if retok:
                new = bm25_index_update(ids, tokens, want)
            else:
                idx = bm25_index.load(gdir / "bm25", mmap=False)
                new = bm25_index.rescore(idx, replace(idx.config, k1=want.k1, b=want.b))
            bm25_index.save(new, gdir / "bm25")
            meta = json.loads((gdir / "gen.json").read_text())
            if "files" in meta:  # the generation's size and checksum record, as a commit writes it
                from retrieval.store.verify import record

                meta["files"] = record(gdir, skip=frozenset({"gen.json"}))
                (gdir / "gen.json").write_text(json.dumps(meta, indent=2))
        manifest["bm25"].update(want.to_dict())
        (coll / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return want.to_dict()


def calibrated(work: Path, name: str, store: Path, qs: list[tuple[str, str]], qrels: str) -> dict:
    """Hybrid on a copy of the collection that calibrated its own fusion, against the default."""
    import shutil

    cal = work / name / "store_calibrated"
    if not (cal / name / "manifest.json").exists() or "fusion" not in json.loads((cal / name / "manifest.json").read_text()):
        shutil.rmtree(cal, ignore_errors=True)
        shutil.copytree(store, cal)
        subprocess.run([knnrag_exe(), "calibrate", "--store", str(cal), "--collection", name, "--json"], check=True,
                       stdout=subprocess.DEVNULL)
    entry = json.loads((cal / name / "manifest.json").read_text())["fusion"]
    qfile = work / name / "queries_cal.jsonl"
    qfile.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in qs))
    run = work / name / "ours_hybrid_calibrated.jsonl"
    # the calibrated collection's best fusion, forced (it is only in force when it won on pseudo-queries)
    b = entry["best"]
    extra = ["--fusion", b["method"]] + (["--norm", b["norm"], "--alpha", str(b["alpha"])] if b["method"] == "convex" else [])
    with open(run, "w") as f:
        subprocess.run([knnrag_exe(), "search", "--queries", str(qfile), "--store", str(cal), "--collection", name, "-k", "100",
                        "--mode", "hybrid", "--json", *extra], stdout=f, check=True)
    return {"entry": entry, "hybrid": score(run, dataset(name), qrels)}


# --------------------------------------------------------------------------- peers
def _corpus(data: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for ln in (data / "corpus.jsonl").read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            ids.append(str(r["_id"]))
            texts.append(((r.get("title") or "") + " " + (r.get("text") or "")).strip())
    return ids, texts


def peers(work: Path, name: str, qs: list[tuple[str, str]], qrels: str) -> dict:
    """bm25s at its defaults, exact MiniLM flat (one vector per document), and their RRF k=60."""
    import bm25s
    import numpy as np
    import Stemmer

    data = dataset(name)
    ids, texts = _corpus(data)
    qids, qtext = [q for q, _ in qs], [t for _, t in qs]
    stem = Stemmer.Stemmer("english")
    bm = bm25s.BM25()
    bm.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    res, _ = bm.retrieve(bm25s.tokenize(qtext, stopwords="en", stemmer=stem, show_progress=False), k=100, show_progress=False)
    bm_ranked = [[ids[j] for j in row] for row in res]
    cache = work / name / "peer_dense.npy"
    from sentence_transformers import SentenceTransformer

    from retrieval.embed.embedder import bundled_model_dir

    model = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    if cache.exists():
        xb = np.load(cache)
    else:
        xb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        np.save(cache, xb)
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    xq = model.encode(qtext, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    _, I = index.search(xq, 100)  # (nq, 100)
    dn_ranked = [[ids[j] for j in row if j >= 0] for row in I]
    rrf_ranked = []
    for a, b in zip(dn_ranked, bm_ranked):
        s: dict[str, float] = {}
        for lst in (a, b):
            for r, d in enumerate(lst, 1):
                s[d] = s.get(d, 0.0) + 1.0 / (60 + r)
        rrf_ranked.append(sorted(s, key=lambda d: -s[d])[:100])
    out = {}
    for label, ranked in (("bm25s", bm_ranked), ("minilm_flat", dn_ranked), ("rrf60", rrf_ranked)):
        run = work / name / f"peer_{label}.jsonl"
        write_run(run, qids, ranked)
        out[label] = score(run, data, qrels)
    return out


# --------------------------------------------------------------------------- ours, through the CLI
def ours_cli(work: Path, name: str, store: Path, qs: list[tuple[str, str]], qrels: str, extra: list[str] = ()) -> dict:
    qfile = work / name / f"queries_{qrels.split('.')[0]}.jsonl"
    qfile.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in qs))
    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        run = work / name / f"ours_{mode}.jsonl"
        with open(run, "w") as f:
            subprocess.run([knnrag_exe(), "search", "--queries", str(qfile), "--store", str(store), "--collection", name,
                            "-k", "100", "--mode", mode, "--json", *extra], stdout=f, check=True)
        out[mode] = score(run, dataset(name), qrels)
    return out


# --------------------------------------------------------------------------- tuning
class Tuner:
    """One dataset's store opened in-process, its queries embedded once, BM25 swappable."""

    def __init__(self, work: Path, name: str, store: Path) -> None:
        from retrieval.store.docstore import DocStore

        self.name, self.work, self.data = name, work, dataset(name)
        self.qs = queries(self.data, TUNE_QRELS[name])
        self.store = DocStore.open(store, read_only=True)
        self.coll = self.store.collection(name)
        with self.coll.reading() as (_, snap):
            self.built = snap.bm25
        memoise_embeddings(self.store, self.coll)

    def use_bm25(self, k1: float, b: float) -> None:
        from retrieval.index import bm25_index

        with self.coll.reading() as (_, snap):  # benchmark only: swap the open snapshot's BM25
            snap.bm25 = bm25_index.rescore(self.built, replace(self.built.config, k1=k1, b=b))

    def use_title_weight(self, weight: int, k1: float, b: float) -> None:
        with self.coll.reading() as (conn, snap):
            ids, tokens = record_tokens(conn, self.coll.tokenizer(), self.data, weight)
            snap.bm25 = bm25_index_update(ids, tokens, replace(self.built.config, k1=k1, b=b))

    def ndcg(self, mode: str, fusion=None) -> float:
        hits = self.store.search_batch([t for _, t in self.qs], k=100, mode=mode, collection=self.name, fusion=fusion)
        run = self.work / self.name / "tune_run.jsonl"
        with open(run, "w") as f:
            for (qid, _), hs in zip(self.qs, hits):
                f.write(json.dumps({"query_id": qid, "hits": [{"doc_id": h.doc_id, "id": h.id} for h in hs]}) + "\n")
        return ndcg().evaluate(str(run), str(self.data / "qrels" / TUNE_QRELS[self.name]))[0]


def choose(table: dict[str, dict], names: list[str]) -> tuple:
    """The setting with the smallest worst regret over `names` (ties: best mean)."""
    best = {n: max(v[n] for v in table.values()) for n in names}
    return min(table, key=lambda s: (round(max(best[n] - table[s][n] for n in names), 4), -sum(table[s][n] for n in names)))


def report_choice(table: dict, names: list[str]) -> dict:
    chosen = choose(table, names)
    out = {"chosen": list(chosen) if isinstance(chosen, tuple) else chosen, "per_dataset": {}, "leave_one_out": {}}
    for n in names:
        own = max(table, key=lambda s: table[s][n])
        out["per_dataset"][n] = {"chosen": round(table[chosen][n], 4), "own_best": round(table[own][n], 4), "own_best_setting": own}
    if len(names) > 1:
        for held in names:
            rest = [n for n in names if n != held]
            pick = choose(table, rest)
            out["leave_one_out"][held] = {"picked_on_others": pick, "held_out_score": round(table[pick][held], 4),
                                          "held_out_best": round(max(v[held] for v in table.values()), 4)}
    return out


def tune(tuners: dict[str, Tuner]) -> dict:
    from retrieval.index.fusion import FusionConfig

    names = list(tuners)
    base = FusionConfig()
    bm_alone: dict = {}
    bm_hybrid: dict = {}
    for k1, b in K1B:
        for n, t in tuners.items():
            t.use_bm25(k1, b)
            bm_alone.setdefault((k1, b), {})[n] = t.ndcg("bm25")
            if BM25_IN_HYBRID:
                bm_hybrid.setdefault((k1, b), {})[n] = t.ndcg("hybrid", base)
        print(f"bm25 k1={k1} b={b}: {bm_alone[(k1, b)]} hybrid {bm_hybrid.get((k1, b))}", file=sys.stderr)
    out = {"bm25_alone": report_choice(bm_alone, names)}
    if bm_hybrid:
        out["bm25_in_hybrid"] = report_choice(bm_hybrid, names)
    k1, b = out["bm25_alone"]["chosen"]
    for t in tuners.values():
        t.use_bm25(k1, b)
    grid = {("rrf", 60, 0.5): FusionConfig(method="rrf", rrf_k=60, alpha=0.5),
            ("zscore", 0.55): FusionConfig(method="convex", norm="zscore", alpha=0.55)}  # the old default
    for norm in NORMS:
        for al in ALPHAS:
            grid[(norm, al)] = FusionConfig(method="convex", norm=norm, alpha=al)
    fu: dict = {}
    for key, cfg in grid.items():
        fu[key] = {n: t.ndcg("hybrid", cfg) for n, t in tuners.items()}
        print(f"fusion {key}: {fu[key]}", file=sys.stderr)
    out["fusion"] = report_choice(fu, names)
    key = tuple(out["fusion"]["chosen"])
    best_fu = grid[key]
    titles: dict = {}
    for w in (1, 2, 3):
        for n, t in tuners.items():
            t.use_title_weight(w, k1, b)
            titles.setdefault(("bm25", w), {})[n] = t.ndcg("bm25")
            titles.setdefault(("hybrid", w), {})[n] = t.ndcg("hybrid", best_fu)
        print(f"title weight {w}: bm25 {titles[('bm25', w)]} hybrid {titles[('hybrid', w)]}", file=sys.stderr)
    out["title_weight"] = {str(k): v for k, v in titles.items()}
    out["title_weight_choice"] = {m: report_choice({w: titles[(m, w)] for w in (1, 2, 3)}, names) for m in ("bm25", "hybrid")}
    out["tables"] = {"bm25_alone": {str(k): v for k, v in bm_alone.items()},
                     "bm25_in_hybrid": {str(k): v for k, v in bm_hybrid.items()}, "fusion": {str(k): v for k, v in fu.items()}}
    return out


def title_check(tuners: dict[str, Tuner], spec: str) -> dict:
    from retrieval.index.fusion import FusionConfig

    k1, b, norm, alpha = spec.split(",")
    fu = FusionConfig(method="rrf", alpha=0.5) if norm == "rrf" else FusionConfig(norm=norm, alpha=float(alpha))
    titles: dict = {}
    for w in (1, 2, 3):
        for n, t in tuners.items():
            t.use_title_weight(w, float(k1), float(b))
            titles.setdefault(f"bm25 x{w}", {})[n] = round(t.ndcg("bm25"), 4)
            titles.setdefault(f"hybrid x{w}", {})[n] = round(t.ndcg("hybrid", fu), 4)
        print(f"title weight {w}: {titles}", file=sys.stderr)
    return titles


def main(argv: list[str] | None = None) -> int:
    global K1B, ALPHAS, NORMS, BM25_IN_HYBRID
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(WORK / "transfer"))
    p.add_argument("--datasets", default="scifact,cacm")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--title-only", default="", metavar="K1,B,NORM,ALPHA", help="only the title-weight check at this setting")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--only-tune", action="store_true", help="tuning only (no CLI runs, no peers)")
    p.add_argument("--calibrate", action="store_true", help="also score a self-calibrated copy of each collection")
    p.add_argument("--only-calibrate", action="store_true", help="only the self-calibrated copies (implies --skip-tune)")
    p.add_argument("--k1b", default="", metavar="K1,B;K1,B", help=f"BM25 grid (default: {K1B})")
    p.add_argument("--alphas", default="", metavar="A,A", help=f"convex fusion alphas (default: {ALPHAS})")
    p.add_argument("--norms", default="tmm,minmax,zscore", help="normalisations to sweep")
    p.add_argument("--bm25-alone", action="store_true", help="choose k1/b on BM25 alone (skip hybrid at each k1/b)")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--quick", action="store_true", help="CACM only, no tuning")
    a = p.parse_args(argv)
    if a.quick:
        a.datasets, a.skip_tune = "cacm", True
    work = Path(a.work)
    names = a.datasets.split(",")
    if a.k1b:
        K1B = [tuple(float(x) for x in kb.split(",")) for kb in a.k1b.split(";")]
    if a.alphas:
        ALPHAS = [float(x) for x in a.alphas.split(",")]
    NORMS = tuple(a.norms.split(","))
    BM25_IN_HYBRID = not a.bm25_alone
    stores = {n: build(work, n) for n in names}
    res: dict = {"datasets": {}}
    for n in names if not a.only_tune else []:
        qs = queries(dataset(n), TEST_QRELS)
        bm = match_bm25_defaults(stores[n], n)
        r = res["datasets"][n] = {"bm25_params": bm}
        if not a.only_calibrate:
            r["ours"] = ours_cli(work, n, stores[n], qs, TEST_QRELS)
        if a.calibrate or a.only_calibrate:
            r["calibrated"] = calibrated(work, n, stores[n], qs, TEST_QRELS)
        if not a.skip_peers and not a.only_calibrate:
            r["peers"] = peers(work, n, qs, TEST_QRELS)
        print(json.dumps({n: r}), file=sys.stderr)
    if a.title_only:
        res["title_weight"] = title_check({n: Tuner(work, n, stores[n]) for n in names}, a.title_only)
    elif not a.skip_tune and not a.only_calibrate:
        res["tuning"] = tune({n: Tuner(work, n, stores[n]) for n in names})
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    print(table(res), file=sys.stderr)
    _record(res, a.quick)
    return 0


def _record(res: dict, quick: bool) -> None:
    for n, r in res["datasets"].items():
        o, pe = r.get("ours"), r.get("peers") or {}
        if not o:
            continue
        extra = {"dense": o["dense"]["ndcg@10"], "bm25": o["bm25"]["ndcg@10"], "recall@100": o["hybrid"]["recall@100"]}
        if pe.get("rrf60"):
            record("transfer", f"hybrid nDCG@10, {n} test, shipped defaults (goal: above peer RRF by >= 0.01)",
                   o["hybrid"]["ndcg@10"], pe["rrf60"]["ndcg@10"], "nDCG@10", peer_name="peer RRF k=60 (bm25s + MiniLM flat)",
                   goal=">= +0.01", extra=extra, quick=quick)
        if pe.get("bm25s"):
            record("transfer", f"our BM25 nDCG@10, {n} test (goal: not below bm25s)", o["bm25"]["ndcg@10"],
                   pe["bm25s"]["ndcg@10"], "nDCG@10", peer_name="bm25s", goal=">= 1.0x", extra=extra, quick=quick)


def table(res: dict) -> str:
    lines = ["| dataset | ours dense | ours BM25 | ours hybrid | bm25s | MiniLM flat | peer RRF k=60 |", "|---|---|---|---|---|---|---|"]
    for n, r in res["datasets"].items():
        if "ours" not in r:
            continue
        o, pe = r["ours"], r.get("peers", {})
        cells = [o["dense"], o["bm25"], o["hybrid"], pe.get("bm25s"), pe.get("minilm_flat"), pe.get("rrf60")]
        lines.append(f"| {n} | " + " | ".join(f"{c['ndcg@10']:.4f} / {c['recall@100']:.4f}" if c else "-" for c in cells) + " |")
    return "nDCG@10 / Recall@100\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
