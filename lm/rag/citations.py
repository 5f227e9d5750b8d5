"""Citation handling for RAG answers: parse [n] markers, cut echoed prompt text, attribute by overlap.

Small instruct models (the bundled 135M) often answer correctly but cite nothing, and tend to
continue the prompt's pattern ("Question: ...", "[2] path (lines ...)") after the answer. We
stop the answer at such an echo (also while streaming) and, when the LM cited nothing, attribute
each answer sentence to the source that contains most of its words. Attributed markers are
flagged as such: they are evidence matching done by us, not claims made by the LM.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

CITE_RE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
# a new line that starts like the prompt, not like an answer
ECHO_RE = re.compile(r"^\s*(Question\s*:|Sources\s*:|\[\d+\]\s+\S+.*\(lines \d+-\d+\)|System\s*:|User\s*:)", re.I)
WORD_RE = re.compile(r"[A-Za-z0-9_]{3,}")
STOP = frozenset("the and for are was were with that this from into your you can has have not but its use used "
                 "using also which when what how why who will would should could may might been being than then "
                 "there their they them these those such each any all via per".split())


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


class EchoCutStream:
    """Wraps an on_token callback: forwards text line by line and goes silent at a prompt echo,
    so the terminal shows exactly cut_echo(full text). Blank lines are held back until a real
    line follows, so a cut leaves no trailing blank lines."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink, self.buf, self.stopped, self.first, self.blank = sink, "", False, True, 0

    def __call__(self, piece: str) -> None:
        if self.stopped:
            return
        self.buf += piece
        while "\n" in self.buf and not self.stopped:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line, end="\n")

    def _line(self, line: str, end: str) -> None:
        if not line.strip():
            self.blank += 1 if end else 0
            return
        if not self.first and ECHO_RE.match(line):
            self.stopped = True
            return
        self.first = False
        self.sink("\n" * self.blank + line + end)
        self.blank = 0

    def close(self) -> None:
        if not self.stopped and self.buf:
            self._line(self.buf, end="")
        self.buf = ""


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD_RE.findall(text)} - STOP


def attribute(answer: str, sources: Sequence[str], min_overlap: float = 0.5) -> tuple[str, list[int]]:
    """Append [n] to each answer sentence whose content words are mostly (>= min_overlap) in source n."""
    src_words = [_words(s) for s in sources]
    parts = re.split(r"(?<=[.!?])(\s+)|(\n+)", answer)
    out, used = [], []
    for part in parts:
        if part is None:
            continue
        words = _words(part)
        if len(words) >= 2 and src_words:
            scores = [len(words & sw) / len(words) for sw in src_words]
            best = max(range(len(scores)), key=scores.__getitem__)
            if scores[best] >= min_overlap:
                n = best + 1
                stripped = part.rstrip()
                tail = part[len(stripped):]
                if stripped and stripped[-1] in ".!?":
                    part = f"{stripped[:-1]} [{n}]{stripped[-1]}{tail}"
                else:
                    part = f"{stripped} [{n}]{tail}"
                if n not in used:
                    used.append(n)
        out.append(part)
    return "".join(out), used
