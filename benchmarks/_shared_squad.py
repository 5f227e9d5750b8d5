"""What the answer benchmarks share (bench_answers, bench_doc_answers, bench_generate, fit_phrases):
squad2-rhine, SQuAD token F1, the project-docs questions and the store of the three collections.

Not a benchmark itself (no `bench_` prefix).
"""
from __future__ import annotations

import re
import string
from pathlib import Path

from benchmarks.common import ROOT, data_dir
from lm.rag.rows import f1  # noqa: F401  (SQuAD token F1: one copy, in lm.rag.rows)

# hand-written questions about this project's own docs (a second store, never used for fitting)
PROJECT_QUESTIONS = [
    ("Which transport does knnrag serve use by default?", "stdio"),
    ("What is the default k for kNN-LM neighbours?", "64"),
    ("Which embedding model is bundled?", "MiniLM"),
    ("What does the tombstones file hold?", "tombstones"),
    ("Which fusion methods does hybrid search support?", "rrf"),
    ("What is the default near-duplicate threshold?", "0.9"),
    ("What is the default relevance threshold on dense cosine?", "0.25"),
    ("How many sources does ask retrieve by default?", "5"),
    ("What is the default maximum file size in MB for indexing?", "20"),
    ("Which LM is the default?", "SmolLM2-135M-Instruct"),
    ("What is the default answer length in tokens?", "256"),
    ("How many parameters must the model have for auto mode to generate?", "1B"),
]
PROJECT_DOCS = ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "docs")


def squad() -> Path:
    return data_dir("squad2-rhine")


def norm(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def build_store(path: Path, cacm_records: int = 1500) -> None:
    """The store of three collections: rhine (squad2-rhine), projdocs (this project's docs), cacm (abstracts)."""
    from retrieval.store.docstore import DocStore

    with DocStore.open(path) as s:
        names = {c["name"] for c in s.list_collections()}
        if "rhine" not in names:
            s.index_paths([str(squad() / "docs")], collection="rhine")
        if "projdocs" not in names:
            s.index_paths([str(ROOT / p) for p in PROJECT_DOCS], collection="projdocs", exclude=["*.png"])
        if "cacm" not in names:
            lines = (data_dir("cacm-beir") / "corpus.jsonl").read_text().splitlines()[:cacm_records]
            tmp = path.parent / f"cacm{cacm_records}.jsonl"
            tmp.write_text("\n".join(lines) + "\n")
            s.index_paths([str(tmp)], collection="cacm")
