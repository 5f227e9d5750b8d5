"""BEIR-style JSONL corpora: one SourceDocument per record ({"_id", "title", "text"})."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

from retrieval.types import Skip, SourceDocument

MALFORMED_LINES_REPORTED = 10
_SHAPE = '(BEIR records look like {"_id": ..., "title": ..., "text": ...})'


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    text, title = record.get("text"), record.get("title")
    has_title = isinstance(title, str) and bool(title.strip())
    if not isinstance(text, str) and not (text is None and has_title):
        return f'no string "text" field {_SHAPE}'
    if record.get("_id", record.get("id")) is None:
        return f'no "_id" field {_SHAPE}'
    return None


def _parse(line: bytes, max_record_bytes: int) -> tuple[dict | None, str | None]:
    if len(line) > max_record_bytes:
        return None, f"record is {len(line) / 1e6:.1f} MB, over the {max_record_bytes / 1e6:g} MB limit"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start} of the line"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    problem = _problem(record)
    return (None, problem) if problem else (record, None)


def jsonl_documents(source: str, data: bytes, max_record_bytes: int) -> Iterator[SourceDocument | Skip]:
    """One SourceDocument per record; line_offset is the record's 0-based line index. A record with
    a title and no (or an empty) text is indexed by its title, as docs/ingest.md says."""
    bad = 0
    for index, raw in enumerate(data.split(b"\n")):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        record, problem = _parse(line, max_record_bytes)
        if record is None:
            bad += 1
            if bad <= MALFORMED_LINES_REPORTED:
                yield Skip(source, f"line {index + 1}: {problem}; fix or remove the line")
            continue
        title = record.get("title")
        title = title.strip() or None if isinstance(title, str) else None
        text = record.get("text") or ""
        metadata: dict = {"line": index + 1}
        if not text.strip() and title:  # a record with only a title: index the title as its text
            text, title, metadata["text_from"] = title, None, "title"
        yield SourceDocument(
            source=source,
            text=text,
            kind="jsonl",
            content_hash=hashlib.sha256(line).hexdigest(),
            doc_id=str(record.get("_id", record.get("id"))),
            title=title,
            line_offset=index,
            metadata=metadata,
        )
    if bad > MALFORMED_LINES_REPORTED:
        yield Skip(source, f"{bad - MALFORMED_LINES_REPORTED} more malformed lines not listed; check the file with `jq -c . FILE`")
