"""A document file's bytes to a SourceDocument (or Skips): sandboxed for PDF and office files."""
from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from typing import Any

from retrieval.ingest.documents.options import DocumentOptions
from retrieval.types import Skip, SourceDocument

# extension -> (kind, converter, modules it needs, parsed in the sandbox)
FORMATS: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    ".pdf": ("pdf", "retrieval.ingest.documents.pdf:convert", ("pypdfium2",), True),
    ".docx": ("docx", "retrieval.ingest.documents.word:convert", ("docx",), True),
    ".pptx": ("pptx", "retrieval.ingest.documents.slides:convert", ("pptx",), True),
    ".xlsx": ("xlsx", "retrieval.ingest.documents.sheets:convert", ("openpyxl",), True),
    ".ipynb": ("notebook", "retrieval.ingest.documents.notebook:convert", ("nbformat",), False),
}
KINDS = frozenset(kind for kind, _, _, _ in FORMATS.values())
_MISSING = {"pypdfium2": "pypdfium2", "docx": "python-docx", "pptx": "python-pptx", "nbformat": "nbformat", "openpyxl": "openpyxl"}


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    return [_MISSING.get(m, m) for m in modules if importlib.util.find_spec(m) is None]


def parse(ext: str, data: bytes, options: DocumentOptions) -> dict[str, Any]:
    """The converter's dict for a file of this extension; raises ParseFailed or Unreadable."""
    from retrieval.ingest.documents.sandbox import sandbox

    kind, parser, _, sandboxed = FORMATS[ext]
    if sandboxed:
        return sandbox().parse(parser, data, options.to_json(), seconds=options.time_limit, memory_mb=options.memory_mb)
    module, _, name = parser.partition(":")
    return getattr(importlib.import_module(module), name)(data, options.to_json())


def document_items(source: str, ext: str, data: bytes, options: DocumentOptions | None) -> Iterator[SourceDocument | Skip]:
    """One SourceDocument holding the extracted text, plus a Skip per part left out; or one Skip."""
    from retrieval.ingest.documents.layout import Unreadable
    from retrieval.ingest.documents.sandbox import ParseFailed

    kind, _, modules, _ = FORMATS[ext]
    missing = missing_modules(modules)
    if missing:
        yield Skip(source, f"{kind} files need {', '.join(missing)}: install knnrag[documents] (pip install 'knnrag[documents]')")
        return
    try:
        got = parse(ext, data, options or DocumentOptions())
    except (ParseFailed, Unreadable) as exc:
        yield Skip(source, str(exc))
        return
    except Exception as exc:  # an in-process converter (notebook) on a damaged file
        yield Skip(source, f"cannot parse: {type(exc).__name__}: {exc}"[:300])
        return
    for reason in got.get("skips") or ():
        yield Skip(source, str(reason))
    text = str(got.get("text") or "")
    if not text.strip():
        scanned = any("no text layer" in str(r) for r in got.get("skips") or ())
        yield Skip(source, "no text found" + (" (no page has a text layer: scanned? index with --ocr)" if scanned else ""))
        return
    blocks = tuple((int(s), int(e), str(k), int(lv), str(t)) for s, e, k, lv, t in got.get("blocks") or ())
    units = tuple((int(s), int(n)) for s, n in got.get("units") or ())
    yield SourceDocument(source, text, kind, hashlib.sha256(data).hexdigest(), title=got.get("title") or None,
                         blocks=blocks, unit=str(got.get("unit") or "") or None, units=units, notes=dict(got.get("notes") or {}))
