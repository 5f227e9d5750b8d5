"""How documents (PDF, office files) are parsed: limits of the sandboxed worker and OCR."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

from retrieval.errors import InvalidInputError

# 60 s: the longest sample PDF here (a 117-page thesis) parses in 1.5 s, so 40x headroom for slow
# disks and long documents; a parse past this is a malformed or hostile file. OCR runs a few
# seconds a page, so it gets ten times as long.
DEFAULT_SECONDS = 60.0
OCR_SECONDS = 600.0
# 1 GiB of address space: a worker with PDFium loaded maps ~150 MB; a 1,000-page PDF parses in
# well under 300 MB. RLIMIT_AS counts mappings, not resident pages, so this is deliberately loose.
DEFAULT_MEMORY_MB = 1024


@dataclass(frozen=True)
class DocumentOptions:
    """Parse limits per file (the worker is killed past them and the file skipped) and OCR."""

    ocr: bool = False  # OCR pages without a text layer with tesseract
    ocr_lang: str = "eng"  # tesseract language(s), e.g. "eng+deu"
    seconds: float | None = None  # None: DEFAULT_SECONDS, or OCR_SECONDS with ocr
    memory_mb: int = DEFAULT_MEMORY_MB

    def __post_init__(self) -> None:
        if self.seconds is not None and not 0 < self.seconds <= 86_400:
            raise InvalidInputError(f"parse time limit {self.seconds} s is not in (0, 86400]", "use e.g. --parse-timeout 60")
        if not 128 <= self.memory_mb <= 1 << 20:
            raise InvalidInputError(f"parse memory limit {self.memory_mb} MB is not in [128, 1048576]", "use e.g. --parse-memory-mb 1024")
        if not self.ocr_lang or not all(c.isalnum() or c in "+_" for c in self.ocr_lang):
            raise InvalidInputError(f"bad OCR language {self.ocr_lang!r}", "use tesseract language codes, e.g. eng or eng+deu")

    @property
    def time_limit(self) -> float:
        return self.seconds if self.seconds is not None else (OCR_SECONDS if self.ocr else DEFAULT_SECONDS)

    def check(self) -> None:
        """Refuse --ocr up front when tesseract is missing (rather than skipping every scanned page)."""
        if self.ocr and shutil.which("tesseract") is None:
            raise InvalidInputError("--ocr needs the tesseract OCR engine, which is not installed",
                                    "install it (Debian/Ubuntu: apt-get install tesseract-ocr) or index without --ocr")

    def to_json(self) -> dict:
        return {"ocr": self.ocr, "ocr_lang": self.ocr_lang}
