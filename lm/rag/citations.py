"""Citation handling for RAG answers: parse [n] markers, cut echoed prompt text, attribute by overlap.

Small instruct models (the bundled 135M) often answer correctly but cite nothing, and tend to
continue the prompt's pattern ("Question: ...", "[2] path (lines ...)") after the answer. We
stop the answer at such an echo (also while streaming) and, when the LM cited nothing, attribute
each answer sentence to the source that contains most of its words (lm.rag.provenance's fallback).
Attributed markers are flagged as such: they are evidence matching done by us, not claims made by the LM.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from retrieval.index.stopwords import STOPWORDS_EN_PLUS

CITE_RE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
# a new line that starts like the prompt, not like an answer
ECHO_RE = re.compile(r"^\s*(Question\s*:|Sources\s*:|\[\d+\]\s+\S+.*\(lines \d+-\d+\)|System\s*:|User\s*:)", re.I)
WORD_RE = re.compile(r"[A-Za-z0-9_]{3,}")
STOP = frozenset(STOPWORDS_EN_PLUS)  # the project's one stop-word list


def extract_citations(answer: str) -> list[int]:
    out: list[int] = []
    for m in CITE_RE.finditer(answer):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part.strip())
            if n not in out:
                out.append(n)
    return out


def cut_echo(text: str) -> str:
    """The answer up to the first line that echoes the prompt format."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and ECHO_RE.match(line):
            return "\n".join(lines[:i]).rstrip()
    return text.rstrip()


ECHO_WORDS = ("question:", "sources:", "system:", "user:")


def _could_echo(line: str) -> bool:
    """Whether a line that starts like this may still turn out to echo the prompt."""
    s = re.sub(r"\s+", "", line).lower()
    return s.startswith("[") or any(w.startswith(s) for w in ECHO_WORDS)


def echoes(text: str) -> bool:
    """Whether the text already holds a prompt echo (generation can stop: cut_echo drops the rest)."""
    return cut_echo(text) != text.rstrip()


class EchoCutStream:
    """Wraps an on_token callback so the terminal shows exactly cut_echo(full text), at once:
    a line is forwarded piece by piece as soon as its start cannot be a prompt echo (the first
    line always), and goes silent at an echo. Only a line that starts like one ("Sources", "[2]")
    waits for its end. Newlines and blank lines are held until a real line follows, so a cut
    leaves no trailing blank lines (the streamed text is the answer before strip())."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink, self.buf, self.stopped, self.first, self.live, self.newlines = sink, "", False, True, False, 0

    def __call__(self, piece: str) -> None:
        for i, part in enumerate(piece.split("\n")):
            if self.stopped:
                return
            if i:
                self._end_line()
            if part and self.live:
                self.sink(part)
            elif part:
                self.buf += part
                self._decide(final=False)

    def _decide(self, final: bool) -> None:
        line = self.buf
        if not line.strip():
            return
        if not self.first and ECHO_RE.match(line):
            self.stopped = True
            return
        if final or self.first or not _could_echo(line):
            self.sink("\n" * self.newlines + line)
            self.first, self.live, self.buf, self.newlines = False, True, "", 0

    def _end_line(self) -> None:
        if not self.live:
            self._decide(final=True)
            if self.stopped:
                return
        self.newlines += 1 if self.live or not self.first else 0
        self.live, self.buf = False, ""

    def close(self) -> None:
        if not self.stopped and not self.live and self.buf:
            self._decide(final=True)
        self.buf = ""


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD_RE.findall(text)} - STOP


SENT_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each answer sentence (a break after . ! ? or at a newline), whitespace excluded."""
    out, a = [], 0
    for m in [*SENT_BREAK.finditer(text), None]:
        b = len(text) if m is None else m.start()
        if text[a:b].strip():
            out.append((a, b))
        a = len(text) if m is None else m.end()
    return out


def overlap_best(sentence: str, sources: Sequence[str], min_overlap: float = 0.5) -> tuple[int, float] | None:
    """(index, share) of the source holding most (>= min_overlap) of the sentence's content words."""
    words = _words(sentence)
    if len(words) < 2 or not sources:
        return None
    scores = [len(words & _words(s)) / len(words) for s in sources]
    best = max(range(len(scores)), key=scores.__getitem__)
    return (best, scores[best]) if scores[best] >= min_overlap else None


def add_markers(text: str, marks: Sequence[tuple[int, int, int]]) -> str:
    """Insert [n] at the end of each (start, end, n) span, before its closing . ! or ?."""
    out, last = [], 0
    for start, end, n in sorted(marks):
        part = text[start:end].rstrip()
        cut = start + len(part)
        if part and part[-1] in ".!?":
            out.append(f"{text[last:cut - 1]} [{n}]{part[-1]}")
        else:
            out.append(f"{text[last:cut]} [{n}]")
        last = cut
    return "".join(out) + text[last:]
