"""Records passed between ingest, chunking and the document store.

Kept free of heavy imports so every layer (CLI, MCP, LangChain adapter) can share them cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote


@dataclass(frozen=True)
class SourceDocument:
    """One logical document: a whole file, or one record of a BEIR-style JSONL file.

    `text` is the exact decoded text that offsets refer to. For a file it is the file's text
    (newlines as in the file, decoded as UTF-8); for a JSONL record it is the record's `text` field.
    """

    source: str  # path as indexed (as the user gave it, joined with the walked relative path)
    text: str
    kind: str  # markdown | rst | text | code | html | jsonl | pdf | docx | pptx | xlsx | notebook
    content_hash: str  # sha256 hex of the raw file bytes (or of the record's JSON line)
    doc_id: str | None = None  # BEIR `_id` for JSONL records
    title: str | None = None  # BEIR `title`, HTML <title>
    line_offset: int = 0  # added to line numbers: a JSONL record's line in its file, minus one
    metadata: dict[str, Any] = field(default_factory=dict)
    # converted documents (PDF, DOCX, PPTX, notebooks: retrieval/ingest/documents): `text` is the
    # extracted text; its blocks (start, end, kind, level, title), where each page/slide/cell starts
    # ((offset, number), ...), and counts for the index report
    blocks: tuple[tuple[int, int, str, int, str], ...] | None = None
    unit: str | None = None  # page | slide | cell | sheet
    units: tuple[tuple[int, int], ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """A file that was not indexed, and why (reported, never silent)."""

    source: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, small enough for the embedder, that cites back exactly.

    Invariant: document.text[start_char:end_char] == text.
    `index_text` is what gets embedded and BM25-indexed: whitespace-normalised, tags stripped for
    HTML, and prefixed with title / heading path for context.
    """

    source: str
    text: str
    start_char: int
    end_char: int
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive
    heading: str  # "Install > From source", "" when none
    kind: str
    index_text: str
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def chunk_uri(collection: str, chunk_id: str | int) -> str:
    """The one spelling of a chunk's resource address (MCP resources, RAG citations).

    Ids are opaque strings: every character outside RFC 3986's unreserved set is percent-encoded
    (UTF-8), so "a/b", "x://y" and "a%2Fb" each have their own address, and the reader (the MCP
    resource template) decodes exactly once. An id of only dots is encoded too ("%2E%2E"), since
    clients drop "." and ".." path segments when they normalise a URI.
    """
    def part(value: str) -> str:
        return "%2E" * len(value) if value.strip(".") == "" else quote(value, safe="")

    return f"chunk://{part(str(collection))}/{part(str(chunk_id))}"


@dataclass(frozen=True)
class Hit:
    """One search result, from the store to the CLI, LangChain, RAG and MCP; field names are fixed
    (other tools parse the JSON of `to_dict`).

    `score` is on the scale of the mode that ranked it: dense = cosine in [-1, 1], bm25 = Lucene
    BM25 (>= 0, grows with the query's length), hybrid = fused score in [0, 1]. `scores` holds
    each mode's raw score (cosine, BM25)."""

    id: str
    score: float
    scores: dict[str, float]
    text: str
    source: str
    start_char: int | None
    end_char: int | None
    start_line: int | None
    end_line: int | None
    heading: str
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    collection: str = "default"

    @property
    def uri(self) -> str:
        """chunk://collection/id, with `#page=N` for a chunk of a PDF (its first page)."""
        page = (self.metadata or {}).get("page_start")
        base = chunk_uri(self.collection, self.id)
        return f"{base}#page={page}" if isinstance(page, int) and not isinstance(page, bool) else base

    def to_dict(self) -> dict:
        return {
            "id": self.id, "score": self.score, "scores": dict(self.scores), "text": self.text, "source": self.source,
            "start_char": self.start_char, "end_char": self.end_char, "start_line": self.start_line,
            "end_line": self.end_line, "heading": self.heading, "metadata": dict(self.metadata),
            "doc_id": self.doc_id, "collection": self.collection,
        }


class LiveChunks(NamedTuple):
    """Every live chunk of a collection as one committed generation holds it: what an index built
    from the chunks (the kNN-LM datastore) syncs from. `texts` keys are the ids search hits carry."""

    uid: str  # the collection's identity (a new one after drop + re-create)
    generation: int  # the committed generation the texts were read at
    texts: dict[str, str]  # chunk id -> chunk text
