"""Does the LM's question likelihood (UPR) pay as one more passage feature? Measured, not assumed.

UPR (Sachan et al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation"):
score a passage by the mean log p(question tokens | passage, "write a question") under the
bundled SmolLM2-135M. For the first N answerable questions of each corpus this takes the 5 most
probable units under the committed model (lm/rag/params.json), and re-ranks them by
z + w * upr, with w chosen on the other corpora (leave one corpus out). It reports, per corpus,
how often the top unit holds the gold answer with and without UPR, and the seconds UPR adds per
question (torch and the LM loaded once, not counted).

  python -m benchmarks.upr_probe [--n 40]

Uses the stores benchmarks/fit_answers.py builds under .bench/answers/store.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import ROOT, WORK

QDIR = ROOT / "benchmarks" / "data" / "questions"
TOP = 5
W_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def upr_scores(lm, passages: list[str], question: str) -> np.ndarray:
    """(n,) mean log p(question token | passage prompt), one padded batch."""
    import torch

    tok = lm.tokenizer
    q = tok(" " + question, add_special_tokens=False)["input_ids"]
    prompts = [tok(f"Passage: {p}\nPlease write a question based on this passage.\nQuestion:",
                   add_special_tokens=False)["input_ids"] for p in passages]
    L = max(len(p) for p in prompts) + len(q)
    pad = tok.pad_token_id or 0
    x = torch.full((len(prompts), L), pad, dtype=torch.long)  # (n, L) left-padded
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = p + q
        x[i, L - len(ids):] = torch.tensor(ids)
        mask[i, L - len(ids):] = 1
    with torch.inference_mode():
        logits = lm.model(input_ids=x, attention_mask=mask).logits  # (n, L, V)
        lp = torch.log_softmax(logits[:, -len(q) - 1:-1].float(), -1)  # (n, |q|, V)
        tgt = torch.tensor(q)[None, :, None].expand(len(prompts), -1, 1)
        return lp.gather(2, tgt)[..., 0].mean(1).numpy()


def _embed_with(emb):
    return lambda texts: np.stack([emb.embed_query(t) for t in texts])  # (n, d) unit rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args(argv)
    from lm.models import load_lm
    from lm.rag import params, passages
    from lm.rag.evidence import term_stats
    from lm.rag.rows import holds
    from retrieval.store.docstore import DocStore

    spec = json.loads((QDIR / "corpora.json").read_text(encoding="utf-8"))
    p = params.default()
    lm = load_lm(None)
    data: dict[str, list] = {}
    with DocStore.open(WORK / "answers" / "store", create=False, read_only=True) as s:
        for corpus, coll in spec["corpora"].items():
            stats, emb = term_stats(s, coll), s.embedder_for(s.collection(coll))
            qs = [json.loads(x) for x in (QDIR / f"{corpus}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
            data[corpus] = []
            for q in qs[:args.n]:
                hits = s.search(q["question"], k=5, mode="hybrid", collection=coll)
                t = passages.unit_table(q["question"], hits, stats, _embed_with(emb), p.max_embed)
                if not len(t.rows):
                    continue
                z, _ = passages.probabilities(t.X, p.unit_weights)
                top = np.argsort(-z)[:TOP]
                texts = [t.units[t.rows[r][0]][t.rows[r][1]].text for r in top]
                t0 = time.perf_counter()
                u = upr_scores(lm, texts, q["question"])
                data[corpus].append((z[top], u, np.array([holds(x, q["answers"]) for x in texts]), time.perf_counter() - t0))

    def top1(items, w: float) -> float:
        return float(np.mean([g[int(np.argmax(z + w * u))] for z, u, g, _ in items])) if items else float("nan")

    out = {}
    for c in data:
        train = [x for d, xs in data.items() if d != c for x in xs]
        w = max(W_GRID, key=lambda v: (top1(train, v), -v))
        out[c] = {"questions": len(data[c]), "w": w, "top_unit_gold": top1(data[c], 0.0),
                  "top_unit_gold_with_upr": top1(data[c], w),
                  "upr_seconds_per_question": round(float(np.median([x[3] for x in data[c]])), 3)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
