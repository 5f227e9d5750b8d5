"""The sandboxed parser: a hanging parse is killed at its time limit, a memory hog or a crash in
the worker skips the file, and the indexer (and the next file) goes on with a fresh worker."""
from __future__ import annotations

import time

import pytest

from retrieval.ingest.documents import convert
from retrieval.ingest.documents.options import DocumentOptions
from retrieval.ingest.documents.sandbox import ParseFailed, Sandbox
from retrieval.store.docstore import DocStore
from tests.support.pdfgen import bomb_pdf, make_pdf

ECHO = "tests.support.slow_parser:echoes"


@pytest.fixture()
def box():
    b = Sandbox()
    yield b
    b.close()


def test_a_hanging_parse_is_killed_at_its_time_limit_and_the_next_call_works(box):
    t0 = time.monotonic()
    with pytest.raises(ParseFailed, match="longer than the 1 s limit"):
        box.parse("tests.support.slow_parser:sleeps", b"x", {}, seconds=1.0, memory_mb=512)
    assert time.monotonic() - t0 < 10
    assert box.worker is None  # killed, not left running
    assert box.parse(ECHO, b"hello", {}, seconds=30, memory_mb=512)["text"] == "hello"


def test_memory_hog_and_crash_are_reported_and_the_worker_replaced(box):
    with pytest.raises(ParseFailed, match="memory limit"):
        box.parse("tests.support.slow_parser:hogs", b"x", {}, seconds=30, memory_mb=256)
    with pytest.raises(ParseFailed, match="died"):
        box.parse("tests.support.slow_parser:crashes", b"x", {}, seconds=30, memory_mb=256)
    first = box.parse(ECHO, b"a", {}, seconds=30, memory_mb=256)["pid"]
    assert box.parse(ECHO, b"b", {}, seconds=30, memory_mb=256)["pid"] == first  # reused while healthy


def test_parser_names_outside_the_package_are_refused(box):
    with pytest.raises(ParseFailed, match="unknown parser"):
        box.parse("os:system", b"x", {}, seconds=30, memory_mb=256)


def test_indexer_skips_a_hanging_file_and_indexes_the_rest(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.pdf").write_bytes(b"%PDF-1.4 hangs")
    (docs / "b.md").write_text("# Notes\n\nCanyons are carved by rivers over millions of years.\n")
    monkeypatch.setitem(convert.FORMATS, ".pdf", ("pdf", "tests.support.slow_parser:sleeps", (), True))
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        t0 = time.monotonic()
        rep = s.index_paths([docs], documents=DocumentOptions(seconds=1.0))
        assert time.monotonic() - t0 < 20
        assert [k["reason"] for k in rep.skipped if k["source"].endswith("a.pdf")][0].startswith("parse took longer")
        assert rep.added == 1 and s.search("canyons rivers", k=1)[0].source.endswith("b.md")


@pytest.mark.slow
def test_a_flate_bomb_is_stopped_by_the_memory_limit(tmp_path):
    pytest.importorskip("pypdfium2")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bomb.pdf").write_bytes(bomb_pdf(384))
    (docs / "fine.pdf").write_bytes(make_pdf([["Estuaries mix fresh river water with salt sea water."]]))
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        rep = s.index_paths([docs], documents=DocumentOptions(memory_mb=256, seconds=60))
        assert any(h.source.endswith("fine.pdf") for h in s.search("estuaries salt water", k=3))
    # PDFium either refuses the stream or the worker hits RLIMIT_AS: bounded memory both ways
    assert [k for k in rep.skipped if k["source"].endswith("bomb.pdf")][0]["reason"]
