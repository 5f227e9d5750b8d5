"""Bulk-embedding throughput: our onnxruntime and torch backends against sentence-transformers.

usage: python -m benchmarks embed_backends [--docs 384] [--reps 3] [--quick]

The same SciFact documents (title + text, truncated at 256 word pieces by every side) are embedded
by each side in turn, `--reps` rounds, interleaved so that machine noise hits all sides alike.
Prints median seconds, docs/s, the ratio of each to sentence-transformers (LangChain's
HuggingFaceEmbeddings encoder), and the cosine of our vectors to sentence-transformers'.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone

from benchmarks.common import data_dir, record

PEER = "sentence-transformers encode (LangChain's HuggingFaceEmbeddings encoder), same documents, interleaved"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=384)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="64 documents, 1 round")
    a = ap.parse_args(argv)
    if a.quick:
        a.docs, a.reps = 64, 1
    with open(data_dir("beir-scifact") / "corpus.jsonl") as f:
        texts = [(d["title"] + ". " + d["text"]).strip() for d in (json.loads(line) for _, line in zip(range(a.docs), f))]

    from sentence_transformers import SentenceTransformer

    from retrieval.embed.embedder import TransformerEmbedder, bundled_model_dir

    sides = {
        "ours onnx": TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", backend="onnx"),
        "ours torch": TransformerEmbedder(bundled_model_dir(), "all-MiniLM-L6-v2", backend="torch"),
    }
    st = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    st.max_seq_length = 256
    runs = {
        "ours onnx": lambda: sides["ours onnx"].embed(texts, batch_size=a.batch_size),
        "ours torch": lambda: sides["ours torch"].embed(texts, batch_size=a.batch_size),
        "sentence-transformers": lambda: st.encode(texts, batch_size=32, normalize_embeddings=True),
    }
    ref = runs["sentence-transformers"]()  # warm-up, and the reference vectors
    cos = {k: float((runs[k]() * ref).sum(1).min()) for k in ("ours onnx", "ours torch")}  # warm-up too
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.reps):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["sentence-transformers"]
    lines = [f"\n## Bulk embedding backends, all-MiniLM-L6-v2 ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
             f"Command: `python -m benchmarks embed_backends --docs {a.docs} --reps {a.reps}` "
             f"({a.docs} SciFact documents, interleaved rounds, medians; 2 CPU cores, fp32)\n",
             "| side | median s | docs/s | time vs sentence-transformers | min cosine to sentence-transformers |",
             "|---|---|---|---|---|"]
    for k in runs:
        c = f"{cos[k]:.6f}" if k in cos else "-"
        lines.append(f"| {k} | {med[k]:.2f} | {a.docs / med[k]:.1f} | {med[k] / base:.2f}x | {c} |")
    text = "\n".join(lines)
    print(text)
    for k in ("ours onnx", "ours torch"):
        record("embed_backends", f"bulk embedding docs/s, {k} (MiniLM, fp32)", a.docs / med[k], a.docs / base, "docs/s",
               peer_name="sentence-transformers", extra={"docs": a.docs, "reps": a.reps, "min_cosine": cos[k]},
               quick=a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
