"""Fit the extractive phrase scorer (lm.rag.extract's weights) on squad2-rhine's even paragraphs.

For every answerable question the runtime path builds the evidence (search, sentences, scores)
and the candidate phrases with their features (extract.candidate_table). The linear weights are a
conditional logit over each question's candidates whose target is the set of candidates with the
best token F1 (L2 = --l2); the masked-cosine weight is then the best of a grid on the same even
questions. It prints the weights to paste into lm/rag/extract.py and the F1 / EM / gold-cited of
the committed and the fitted weights, with and without the masked re-ranking, on the even (fit)
and odd (held-out) paragraphs' answerable questions (why/how-to questions, answered by a whole
sentence, are left out).

With --lm-rerank it also tries the LM's own likelihood as one more re-ranking term: log p(span +
end of turn | sentence, question) from SmolLM2 (lm.rag.lm_scorer) for the best N candidates after
the masked re-ranking, its weight and N chosen on the even questions, reported on the odd ones.

  python -m benchmarks.fit_phrases [--l2 1.0] [--json OUT] [--lm-rerank]

Needs the bench store (`python -m benchmarks answers` builds it under .bench/store; so does this).
A fitting script, not a benchmark: it records nothing in benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._shared_squad import build_store, f1, norm, squad
from benchmarks.common import WORK

GRID = (-20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 20.0)
LM_WEIGHTS = (0.05, 0.1, 0.2, 0.3)
LM_TOP = (3, 5, 10)


def collect(store, questions: list[dict]) -> list[dict]:
    """Per answerable question: its candidates, their features, token F1 and masked cosines."""
    from lm.rag.answer import RagConfig, relevance
    from lm.rag.evidence import gather, term_stats
    from lm.rag.extract import RERANK, candidate_table, linear_scores, masked_cosines
    from lm.rag.spans import answer_type

    emb = store.embedder_for(store.collection("rhine"))
    stats = term_stats(store, "rhine")

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([emb.embed_query(t) for t in texts])  # (n, d)

    out = []
    for q in questions:
        hits = store.search(q["question"], k=5, collection="rhine")
        rel = [h for h in hits if relevance(h, RagConfig())]
        ev = gather(q["question"], rel, embed, stats)
        cands = candidate_table(ev) if answer_type(q["question"]) != "explain" else []
        if not cands:
            continue
        X = np.array([c.features for c in cands])  # (n, 2 + features)
        # the masked cosine of the candidates the committed weights would re-rank (the runtime's set)
        top = np.argsort(-linear_scores(cands))[: 3 * RERANK]
        mask = np.full(len(cands), np.nan)
        mask[top] = masked_cosines(ev, [cands[t] for t in top], embed)
        out.append({"q": q, "X": X, "mask": mask, "text": [c.span.text for c in cands], "sent": [c.sentence.span.text for c in cands],
                    "f1": np.array([f1(c.span.text, q["answers"]) for c in cands]),
                    "gold": np.array([ev.hits[c.sentence.hit].source.endswith("/" + q["file"]) for c in cands])})
    return out


def fit(rows: list[dict], l2: float) -> np.ndarray:
    from scipy.optimize import minimize

    groups = [(r["X"], (r["f1"] >= r["f1"].max() - 1e-9) / (r["f1"] >= r["f1"].max() - 1e-9).sum()) for r in rows if r["f1"].max() > 0]

    def loss(w: np.ndarray):
        L, G = 0.5 * l2 * w @ w, l2 * w
        for X, y in groups:
            z = X @ w  # (n,)
            p = np.exp(z - z.max())
            p /= p.sum()
            L -= float(y @ np.log(p + 1e-12))
            G = G - X.T @ (y - p)
        return L, G

    return minimize(loss, np.zeros(groups[0][0].shape[1]), jac=True, method="L-BFGS-B").x


def _boost(s: np.ndarray, extra: np.ndarray, n: int) -> np.ndarray:
    """s + extra over the n best of s, -inf elsewhere (the runtime's re-ranking); s unchanged where
    extra is missing (NaN) for any of them."""
    top = np.argsort(-s)[:n]
    if np.isnan(extra[top]).any():
        return s
    out = np.full(len(s), -np.inf)
    out[top] = s[top] + extra[top]
    return out


def _masked(r: dict, w: np.ndarray, mask_weight: float, rerank: int) -> np.ndarray:
    s = r["X"] @ w
    return _boost(s, mask_weight * r["mask"], rerank) if mask_weight else s


def add_lm(rows: list[dict], w: np.ndarray, mask_weight: float, rerank: int) -> float:
    """r["lm"]: the LM's log p(candidate | sentence, question) for the best max(LM_TOP) candidates
    of the runtime's scoring (NaN elsewhere); returns the median seconds per question."""
    from lm.models import load_lm
    from lm.rag.lm_scorer import span_log_probs

    lm = load_lm(None)
    secs = []
    for r in rows:
        top = np.argsort(-_masked(r, w, mask_weight, rerank))[: min(max(LM_TOP), len(r["text"]))]
        r["lm"] = np.full(len(r["text"]), np.nan)
        t0 = time.perf_counter()
        for sent in {r["sent"][t] for t in top}:
            idx = [int(t) for t in top if r["sent"][t] == sent]
            r["lm"][idx] = span_log_probs(lm, sent, r["q"]["question"], [r["text"][i] for i in idx])
        secs.append(time.perf_counter() - t0)
    return float(np.median(secs))


def score(rows: list[dict], w: np.ndarray, mask_weight: float, rerank: int, n_questions: int,
          lm_weight: float = 0.0, lm_top: int = 0) -> dict:
    """Mean F1 / EM / gold cited over n_questions (a question without candidates scores 0)."""
    F, E, C = 0.0, 0.0, 0.0
    for r in rows:
        s = _masked(r, w, mask_weight, rerank)
        if lm_weight and lm_top:
            s = _boost(s, lm_weight * r["lm"], lm_top)
        b = int(np.argmax(s))
        F += r["f1"][b]
        E += float(any(norm(r["text"][b]) == norm(g) for g in r["q"]["answers"]))
        C += float(r["gold"][b])
    n = max(1, n_questions)
    return {"f1": round(F / n, 3), "em": round(E / n, 3), "gold_cited": round(C / n, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=str(WORK / "store"))
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--lm-rerank", action="store_true", help="also try the LM's span likelihood as a re-ranking term")
    args = ap.parse_args(argv)
    from lm.rag.extract import MASK_WEIGHT, PHRASE_WEIGHTS, RERANK, SENTENCE_WEIGHTS
    from lm.rag.spans import FEATURES, answer_type
    from retrieval.store.docstore import DocStore

    build_store(Path(args.store))
    qs = [json.loads(x) for x in (squad() / "questions.jsonl").read_text().splitlines()]
    ans = [q for q in qs if not q["impossible"] and answer_type(q["question"]) != "explain"]
    even = [q for q in ans if int(q["file"][6:9]) % 2 == 0]
    odd = [q for q in ans if int(q["file"][6:9]) % 2 == 1]
    t0 = time.perf_counter()
    with DocStore.open(Path(args.store), read_only=True) as s:
        r_even, r_odd = collect(s, even), collect(s, odd)
    print(f"collected in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    names = ["sentence_rel", "sentence_top", *FEATURES]
    w = fit(r_even, args.l2)
    grid = {m: score(r_even, w, m, RERANK, len(even))["f1"] for m in GRID}
    best_m = max(grid, key=lambda m: grid[m])
    committed = np.array([*SENTENCE_WEIGHTS, *(PHRASE_WEIGHTS[f] for f in FEATURES)])
    report = {"even_questions": len(even), "odd_questions": len(odd), "mask_grid_even_f1": grid, "mask_weight": best_m,
              "fitted": {"sentence_weights": [round(float(x), 2) for x in w[:2]],
                         "phrase_weights": {n: round(float(x), 2) for n, x in zip(names[2:], w[2:])}}}
    for label, weights, m in (("fitted_linear", w, 0.0), ("fitted_masked", w, best_m),
                              ("committed_linear", committed, 0.0), ("committed_masked", committed, MASK_WEIGHT)):
        report[label] = {"even": score(r_even, weights, m, RERANK, len(even)), "odd": score(r_odd, weights, m, RERANK, len(odd))}
    if args.lm_rerank:
        secs = add_lm(r_even + r_odd, committed, MASK_WEIGHT, RERANK)
        def lm_score(rows: list[dict], n_q: int, setting: tuple[float, int]) -> dict:
            return score(rows, committed, MASK_WEIGHT, RERANK, n_q, *setting)

        settings = [(lw, n) for lw in LM_WEIGHTS for n in LM_TOP]
        grid_lm = {st: lm_score(r_even, len(even), st)["f1"] for st in settings}
        best = max(settings, key=lambda st: grid_lm[st])
        report["lm_rerank"] = {"grid_even_f1": {f"{lw}@{n}": v for (lw, n), v in grid_lm.items()},
                               "chosen": f"{best[0]}@{best[1]}", "lm_seconds_per_question": round(secs, 2),
                               "even": lm_score(r_even, len(even), best), "odd": lm_score(r_odd, len(odd), best),
                               "odd_at_every_setting": {f"{lw}@{n}": lm_score(r_odd, len(odd), (lw, n))["f1"] for lw, n in settings}}
    out = json.dumps(report, indent=1)
    print(out)
    if args.json:
        Path(args.json).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
