"""The records an answer is made of: its numbered sources, the copied passage and phrase, a sentence's cited chunks.

Dataclasses rather than dicts, so every field exists with one meaning and one default whichever
mode produced the answer; `RagAnswer.to_dict` (dataclasses.asdict) turns them into the JSON of
`ask --json` and the MCP `ask` tool, whose field names stay fixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from retrieval.types import Hit


class Source(NamedTuple):
    """A hit given to the LM as source [n], and whether its text was cut to fit the prompt."""

    hit: Hit
    truncated: bool = False


@dataclass
class Citation:
    """Source [n] of an answer: the chunk, and the lines (and, extractive, characters) it supports."""

    n: int  # the [n] marker
    cited: bool  # the answer cites [n]
    source: str
    start_line: int  # the copied answer's lines when extractive, else the chunk's
    end_line: int
    chunk_id: str
    uri: str
    score: float
    heading: str | None = None
    truncated: bool = False  # generate: the LM saw only the start of the chunk
    basis: str | None = None  # generate: lm (the LM's marker), provenance or overlap (the fallback)
    in_prompt: bool | None = None  # generate: the LM was given the chunk (one cited by provenance may not be)
    start_char: int | None = None  # extractive: the copied answer's characters in the file
    end_char: int | None = None
    chunk_start_line: int | None = None  # extractive: the whole chunk's lines
    chunk_end_line: int | None = None
    page_start: int | None = None  # a PDF's pages the chunk spans (cite "file.pdf p. N")
    page_end: int | None = None

    @classmethod
    def of(cls, n: int, hit: Hit, cited: bool, truncated: bool = False) -> Citation:
        md = hit.metadata or {}
        return cls(n, cited, str(hit.source), int(hit.start_line or 0), int(hit.end_line or 0), str(hit.id),
                   hit.uri, float(hit.score), hit.heading or None, truncated,
                   page_start=md.get("page_start"), page_end=md.get("page_end"))


@dataclass(frozen=True)
class Excerpt:
    """A piece of a chunk, located: chunk_text[chunk_start:chunk_end] == text == file_text[start_char:end_char]."""

    text: str
    chunk_start: int  # in the chunk text
    chunk_end: int
    start_char: int  # in the source file (the chunk's offsets when the source has none, e.g. JSONL)
    end_char: int
    start_line: int  # in the source file, 1-based, inclusive
    end_line: int


@dataclass(frozen=True)
class AnswerSpan:
    """An extractive answer: the passage chunk_text[chunk_start:chunk_end] == text, where it lies in the
    file, the heading path it sits under and, for a table row, the table's header row."""

    text: str
    chunk_id: str
    source: str
    start_line: int  # in the source file, 1-based, inclusive
    end_line: int
    start_char: int  # in the source file
    end_char: int
    chunk_start: int  # in the chunk text
    chunk_end: int
    heading: str  # "Guide > Install", "" when none
    units: int  # sentences, list items or table rows in the passage
    table_header: Excerpt | None = None


@dataclass
class ChunkRef:
    """One chunk an answer sentence is attributed to, with its share of the sentence's kNN mass
    (or its overlap score, for the fallback); n, source and lines once it is a numbered source."""

    chunk_id: str
    weight: float
    n: int | None = None
    source: str | None = None
    start_line: int | None = None
    end_line: int | None = None
