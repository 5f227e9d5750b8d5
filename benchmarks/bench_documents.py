"""PDF text: pages/s against LangChain's PyPDFLoader (pypdf), markitdown and pdfminer.six; word
recall against poppler's `pdftotext`; indexing end to end against PyPDFLoader +
RecursiveCharacterTextSplitter + LangChain FAISS.from_documents with the same MiniLM.

usage: python -m benchmarks.bench_documents [--quick] [--repeat 3] [--no-index]

Data: ../shared/data/pdf-samples (31 PDFs from many producers). "Text PDFs" are those where
pdftotext finds at least 20 words (scans, the password-protected file and the unreadable one are
left out of every figure, for every tool alike). Needs poppler-utils (pdftotext) and the `bench`
extra (pypdf, langchain-community, langchain-text-splitters, markitdown[pdf]).

Ours: the whole path `knnrag index` takes for a PDF: bytes sent to the sandboxed worker (PDFium),
text, running header/footer removal, outline headings, JSON back. Recall is measured on the text
with running headers kept (pdftotext keeps them; the index drops them on purpose) and also
reported as indexed.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import data_dir, record, timer

PEER = "LangChain PyPDFLoader (pypdf) [+ RecursiveCharacterTextSplitter + FAISS.from_documents, same MiniLM]; markitdown; pdfminer.six"
NAME = "documents"
_WORD = re.compile(r"\w+", re.UNICODE)
MIN_WORDS = 20  # fewer words from pdftotext: a scan or an empty form, not a text PDF


def words(text: str) -> Counter:
    return Counter(w.lower() for w in _WORD.findall(text))


def recall(ref: Counter, got: Counter) -> tuple[int, int]:
    """(reference words found, reference words) with multiplicity."""
    return sum(min(n, got[w]) for w, n in ref.items()), sum(ref.values())


def pdftotext(path: Path) -> str:
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=False).stdout.decode(
        "utf-8", errors="replace")


def text_pdfs(folder: Path, quick: bool) -> list[tuple[Path, str]]:
    out = []
    for p in sorted(folder.glob("*.pdf")):
        ref = pdftotext(p)
        if sum(words(ref).values()) >= MIN_WORDS:
            out.append((p, ref))
    return out[:8] if quick else out


def ours(path: Path, keep_running: bool = False) -> dict:
    from retrieval.ingest.documents.sandbox import sandbox

    options = {"keep_running_lines": True} if keep_running else {}
    return sandbox().parse("retrieval.ingest.documents.pdf:convert", path.read_bytes(), options, seconds=120, memory_mb=1024)


def pypdf_loader(path: Path) -> str:
    from langchain_community.document_loaders import PyPDFLoader

    return "\n".join(d.page_content for d in PyPDFLoader(str(path)).load())


def markitdown(path: Path) -> str:
    from markitdown import MarkItDown

    return MarkItDown().convert(str(path)).text_content


def pdfminer(path: Path) -> str:
    from pdfminer.high_level import extract_text

    return extract_text(str(path))


def extraction(files: list[tuple[Path, str]], repeat: int) -> dict[str, dict]:
    """Per tool: best-of-repeat seconds over all files, failures, and word recall vs pdftotext."""
    ours(files[0][0])  # start the worker (its start is a one-off per process, like an import)
    tools = {"knnrag (pypdfium2, sandboxed)": lambda p: ours(p, keep_running=True)["text"], "PyPDFLoader (pypdf)": pypdf_loader,
             "markitdown": markitdown, "pdfminer.six": pdfminer}
    out = {}
    for name, fn in tools.items():
        best, texts, failed = float("inf"), {}, []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for path, _ in files:
                try:
                    texts[path] = fn(path)
                except Exception as exc:  # a peer that cannot read a file: counted, its words missing
                    failed.append(f"{path.name}: {type(exc).__name__}")
                    texts[path] = ""
            best = min(best, time.perf_counter() - t0)
        found = total = 0
        for path, ref in files:
            f, t = recall(words(ref), words(texts[path]))
            found, total = found + f, total + t
        out[name] = {"seconds": best, "recall": found / max(total, 1), "failed": sorted(set(failed))}
    return out


def indexed_recall(files: list[tuple[Path, str]]) -> float:
    found = total = 0
    for path, ref in files:
        f, t = recall(words(ref), words(ours(path)["text"]))
        found, total = found + f, total + t
    return found / max(total, 1)


def index_ours(folder: Path, store: Path, embedder: str | None = None) -> float:
    from retrieval.store.docstore import DocStore

    with timer() as t:
        with DocStore.open(store, embedder=embedder) as s:
            rep = s.index_paths([folder])
    assert rep.chunks_added > 0, rep.to_dict()
    return t[0]


def split_langchain(files: list[Path]) -> float:
    """PyPDFLoader + RecursiveCharacterTextSplitter: the peer's work before the embedder."""
    from langchain_community.document_loaders import PyPDFLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    with timer() as t:
        docs = []
        for p in files:
            try:
                docs += PyPDFLoader(str(p)).load()
            except Exception:  # counted as read nothing, like a skip
                continue
        RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(docs)
    return t[0]


def index_langchain(files: list[Path]) -> tuple[float, int]:
    from langchain_community.document_loaders import PyPDFLoader
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from retrieval.embed.embedder import bundled_model_dir

    with timer() as t:
        emb = HuggingFaceEmbeddings(model_name=str(bundled_model_dir()))
        docs = []
        for p in files:
            try:
                docs += PyPDFLoader(str(p)).load()
            except Exception:  # counted as read nothing, like a skip
                continue
        chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(docs)
        FAISS.from_documents(chunks, emb)
    return t[0], len(chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 PDFs, one repeat")
    ap.add_argument("--repeat", type=int, default=3, help="extraction passes per tool; the best counts")
    ap.add_argument("--no-index", action="store_true", help="skip the end-to-end indexing comparison")
    ap.add_argument("--index-only", action="store_true", help="only the end-to-end indexing comparison")
    args = ap.parse_args(argv)
    if shutil.which("pdftotext") is None:
        sys.exit("pdftotext is missing: apt-get install poppler-utils")
    files = text_pdfs(data_dir("pdf-samples"), args.quick)
    pages = sum(len(ours(p)["units"]) for p, _ in files)
    print(f"{len(files)} text PDFs, {pages} pages", file=sys.stderr)
    if not args.index_only:
        compare_extraction(files, pages, args)
    if not args.no_index:
        compare_indexing(files, pages, args.quick)
    return 0


def compare_extraction(files: list[tuple[Path, str]], pages: int, args: argparse.Namespace) -> None:
    res = extraction(files, 1 if args.quick else args.repeat)
    mine = res["knnrag (pypdfium2, sandboxed)"]
    for name, r in res.items():
        print(f"{name:32s} {pages / r['seconds']:8.1f} pages/s  recall {r['recall']:.4f}  failed {r['failed']}", file=sys.stderr)
    peer = res["PyPDFLoader (pypdf)"]
    extra = {"files": len(files), "pages": pages,
             "tools": {n: {"pages_per_s": pages / r["seconds"], "recall": r["recall"], "failed": r["failed"]} for n, r in res.items()}}
    record(NAME, "pdf_pages_per_s", pages / mine["seconds"], pages / peer["seconds"], "pages/s", peer_name="PyPDFLoader (pypdf)",
           goal=">= 10x", extra=extra, quick=args.quick)
    record(NAME, "pdf_pages_per_s_vs_markitdown", pages / mine["seconds"], pages / res["markitdown"]["seconds"], "pages/s",
           peer_name="markitdown", goal=">= 10x", quick=args.quick)
    as_indexed = indexed_recall(files)
    print(f"recall as indexed (running headers dropped): {as_indexed:.4f}", file=sys.stderr)
    record(NAME, "pdf_word_recall_vs_pdftotext", mine["recall"], peer["recall"], "recall", peer_name="PyPDFLoader (pypdf)",
           goal=">= 0.98", extra={"as_indexed": as_indexed, "markitdown": res["markitdown"]["recall"],
                                  "pdfminer": res["pdfminer.six"]["recall"]}, quick=args.quick)


def compare_indexing(files: list[tuple[Path, str]], pages: int, quick: bool) -> None:
    """Both sides in this process, ours first, then the peer; each timing includes its model load."""
    import sentence_transformers  # noqa: F401  (imported before either side is timed: torch's import is shared)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pdfs"
        folder.mkdir()
        for p, _ in files:
            shutil.copy(p, folder / p.name)
        # the work before the embedder (ours: parse, chunk, commit with the hash test embedder)
        our_pre = index_ours(folder, Path(tmp) / "hash-store", embedder="hash-64")
        lc_pre = split_langchain([folder / p.name for p, _ in files])
        our_seconds = index_ours(folder, Path(tmp) / "store")
        lc_seconds, lc_chunks = index_langchain([folder / p.name for p, _ in files])
    print(f"extract + chunk (+ commit): knnrag {our_pre:.2f} s, PyPDFLoader + splitter {lc_pre:.2f} s: {our_pre / lc_pre:.2f}x",
          file=sys.stderr)
    record(NAME, "pdf_extract_chunk_seconds", our_pre, lc_pre, "s", peer_name="PyPDFLoader + RecursiveCharacterTextSplitter",
           higher_is_better=False, goal="(the part of indexing before the embedder)", extra={"files": len(files), "pages": pages},
           quick=quick)
    print(f"index end to end: knnrag {our_seconds:.2f} s, LangChain {lc_seconds:.2f} s ({lc_chunks} chunks): "
          f"{our_seconds / lc_seconds:.2f}x", file=sys.stderr)
    record(NAME, "pdf_index_seconds", our_seconds, lc_seconds, "s", peer_name="PyPDFLoader + RecursiveCharacterTextSplitter + FAISS",
           higher_is_better=False, goal="<= 0.5x", extra={"files": len(files), "pages": pages, "langchain_chunks": lc_chunks}, quick=quick)


if __name__ == "__main__":
    sys.exit(main())
