"""Ingest: walking paths into SourceDocuments and Skips, bad input reported with reasons."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from retrieval.errors import InvalidInputError
from retrieval.ingest import fsread
from retrieval.ingest.sources import file_hash, iter_sources, kind_of
from retrieval.types import Skip, SourceDocument


def write(path, data, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(data)
    return path


def collect(*args, **kw):
    items = list(iter_sources(*args, **kw))
    docs = [i for i in items if isinstance(i, SourceDocument)]
    skips = [i for i in items if isinstance(i, Skip)]
    return docs, skips


def test_walk_formats_sources_and_order(tmp_path, monkeypatch):
    write(tmp_path / "docs/b.md", "# B\n\ntext\n")
    write(tmp_path / "docs/a.rst", "Title\n=====\n")
    write(tmp_path / "docs/sub/c.py", "def f():\n    return 1\n")
    write(tmp_path / "docs/sub/page.html", "<html><head><title>Hi &amp; bye</title></head><body><p>x</p></body></html>")
    write(tmp_path / "docs/NOTES", "plain text without extension\n")
    write(tmp_path / "docs/d.txt", "text")
    write(tmp_path / "docs/conf.toml", "[a]\nb = 1\n")
    monkeypatch.chdir(tmp_path)
    docs, skips = collect(["docs/"])
    assert not skips
    assert [d.source for d in docs] == [
        "docs/NOTES", "docs/a.rst", "docs/b.md", "docs/conf.toml", "docs/d.txt", "docs/sub/c.py", "docs/sub/page.html"]
    kinds = {d.source: d.kind for d in docs}
    assert kinds == {
        "docs/NOTES": "text", "docs/a.rst": "rst", "docs/b.md": "markdown", "docs/conf.toml": "code",
        "docs/d.txt": "text", "docs/sub/c.py": "code", "docs/sub/page.html": "html",
    }
    by = {d.source: d for d in docs}
    assert by["docs/sub/c.py"].metadata == {"language": "python"}
    assert by["docs/sub/page.html"].title == "Hi & bye"
    assert by["docs/b.md"].content_hash == hashlib.sha256(b"# B\n\ntext\n").hexdigest() == file_hash(tmp_path / "docs/b.md")
    # "." as root gives bare relative paths; an absolute root stays absolute
    assert [d.source for d in collect(["."])[0]][0] == "docs/NOTES"
    assert collect([str(tmp_path / "docs")])[0][0].source == f"{tmp_path}/docs/NOTES"
    # a file named twice (directly and through its folder) is yielded once
    assert len(collect(["docs/b.md", "docs"])[0]) == len(docs)


def test_newlines_and_bom_kept_exact(tmp_path):
    write(tmp_path / "crlf.md", b"\xef\xbb\xbf# T\r\n\r\nline one\r\nline two\r\n")
    (d,), _ = collect([tmp_path / "crlf.md"])
    assert d.text == "# T\r\n\r\nline one\r\nline two\r\n"  # BOM removed, CRLF kept
    assert d.content_hash == hashlib.sha256((tmp_path / "crlf.md").read_bytes()).hexdigest()


def test_gitignore_exclude_and_always_skipped(tmp_path):
    write(tmp_path / ".gitignore", "*.log\nbuild/\n!keep.log\n")
    write(tmp_path / "a.md", "a")
    write(tmp_path / "x.log", "log")
    write(tmp_path / "keep.log", "kept")
    write(tmp_path / "build/out.md", "built")
    write(tmp_path / "sub/.gitignore", "secret.md\n")
    write(tmp_path / "sub/secret.md", "s")
    write(tmp_path / "sub/open.md", "o")
    write(tmp_path / "sub/deep/y.log", "log")
    write(tmp_path / "drafts/d.md", "d")
    write(tmp_path / "notes.tmp", "t")
    for skipped in (".git/config", ".venv/lib/x.py", "__pycache__/m.py", "node_modules/p/index.js"):
        write(tmp_path / skipped, "x")
    docs, skips = collect([tmp_path], exclude=["drafts/", "*.tmp"])
    rel = sorted(os.path.relpath(d.source, str(tmp_path)) for d in docs)
    assert rel == ["a.md", "keep.log", "sub/open.md"]
    assert not skips


def test_exclude_applies_to_files_named_directly(tmp_path, monkeypatch):
    write(tmp_path / "a.md", "a")
    write(tmp_path / "b.log", "b")
    monkeypatch.chdir(tmp_path)
    docs, _ = collect(["a.md", "b.log"], exclude=["*.log"])
    assert [d.source for d in docs] == ["a.md"]


def test_exclude_matching_the_named_root_applies_below_it_only(tmp_path, monkeypatch):
    write(tmp_path / "build/proj/a.md", "a")
    write(tmp_path / "build/proj/build/out.md", "o")
    write(tmp_path / "docs/keep.md", "k")
    write(tmp_path / "docs/drafts/d.md", "d")
    docs, _ = collect([tmp_path / "build/proj"], exclude=["build/"])
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["a.md"]
    monkeypatch.chdir(tmp_path)
    docs, _ = collect(["docs"], exclude=["docs/drafts/"])  # a pattern written relative to the current folder
    assert [d.source for d in docs] == ["docs/keep.md"]


def test_bad_exclude_pattern():
    with pytest.raises(InvalidInputError) as err:
        list(iter_sources(["."], exclude=["a/***/[z-a]"]))
    assert "exclude" in str(err.value)


def test_missing_path_raises_before_yielding(tmp_path):
    write(tmp_path / "a.md", "a")
    with pytest.raises(InvalidInputError) as err:
        list(iter_sources([tmp_path / "a.md", tmp_path / "nope"]))
    assert "not found" in err.value.message and "nope" in err.value.message and err.value.hint
    with pytest.raises(InvalidInputError):
        list(iter_sources([]))


def test_empty_folder_yields_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert list(iter_sources([tmp_path / "empty"])) == []


def test_binary_undecodable_utf16_skipped_with_reason(tmp_path):
    write(tmp_path / "nul.txt", b"abc\x00def")
    write(tmp_path / "img.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    write(tmp_path / "doc.dat.txt", b"%PDF-1.4 ...")
    write(tmp_path / "weights.safetensors", b"{}")
    write(tmp_path / "paper.pdf", b"%PDF-1.4 ...")
    write(tmp_path / "bad.md", "caf\xe9 ok".encode("latin-1"))
    write(tmp_path / "wide.txt", "hello".encode("utf-16"))
    write(tmp_path / "good.md", "fine")
    docs, skips = collect([tmp_path])
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["good.md"]
    reasons = {s.source.rsplit("/", 1)[1]: s.reason for s in skips}
    assert "binary" in reasons["nul.txt"] and "NUL" in reasons["nul.txt"]
    assert "image" in reasons["img.png"] and "PDF" in reasons["doc.dat.txt"] and "PDF" in reasons["paper.pdf"]
    assert reasons["weights.safetensors"].startswith("unsupported format (binary data, .safetensors)")
    assert reasons["bad.md"] == "invalid UTF-8 at byte 3; re-encode the file as UTF-8"
    assert "UTF-16" in reasons["wide.txt"] and "UTF-8" in reasons["wide.txt"]


def test_too_large_file_skipped_cheaply(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate(50_000_000)  # sparse: costs no disk and is never read
    docs, skips = collect([tmp_path])
    assert docs == []
    assert skips == [Skip(f"{tmp_path}/big.txt", "file is 50.0 MB, over the 20 MB limit; split it or raise --max-file-mb")]
    docs, skips = collect([big], max_file_bytes=1000)
    assert "over the 0.001 MB limit" in skips[0].reason


def test_unreadable_file_skipped(tmp_path, monkeypatch):
    target = write(tmp_path / "secret.md", "x")
    write(tmp_path / "ok.md", "y")
    real_open = fsread.open_nonblocking

    def fake_open(name, dir_fd, **kw):
        if name == target.name:
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, dir_fd, **kw)

    monkeypatch.setattr(fsread, "open_nonblocking", fake_open)
    docs, skips = collect([tmp_path])
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["ok.md"]
    assert skips[0].source.endswith("secret.md") and "permission denied" in skips[0].reason


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_symlink_loops_do_not_hang(tmp_path):
    write(tmp_path / "root/a.md", "a")
    write(tmp_path / "root/sub/b.md", "b")
    os.symlink(tmp_path / "root", tmp_path / "root/sub/loop")
    os.symlink(tmp_path / "root/sub", tmp_path / "root/sub/self")
    os.symlink(tmp_path / "nowhere", tmp_path / "root/broken.md")
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(iter_sources([tmp_path / "root"])), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "walk did not finish: symlink loop"
    docs = [i for i in result if isinstance(i, SourceDocument)]
    skips = [i for i in result if isinstance(i, Skip)]
    assert sorted(d.source.rsplit("/", 1)[1] for d in docs) == ["a.md", "b.md"]
    assert [s.source.rsplit("/", 1)[1] for s in skips] == ["broken.md"] and "broken symbolic link" in skips[0].reason


def test_jsonl_records(tmp_path):
    lines = [
        json.dumps({"_id": "d1", "title": "First", "text": "Alpha text.", "metadata": {}}),
        "",
        json.dumps({"_id": 7, "title": "", "text": "Beta\nline two."}),
        "{not json",
        json.dumps({"_id": "d3"}),
        json.dumps(["list"]),
        json.dumps({"_id": "d4", "title": "Last", "text": "Gamma."}),
        json.dumps({"_id": "d5", "title": "Only a title", "text": ""}),
        json.dumps({"_id": "d6", "title": "Title, no text key"}),
    ]
    raw = ("\r\n".join(lines) + "\n").encode()
    write(tmp_path / "corpus.jsonl", raw)
    docs, skips = collect([tmp_path / "corpus.jsonl"])
    assert [(d.doc_id, d.title, d.text, d.line_offset) for d in docs] == [
        ("d1", "First", "Alpha text.", 0), ("7", None, "Beta\nline two.", 2), ("d4", "Last", "Gamma.", 6),
        ("d5", None, "Only a title", 7), ("d6", None, "Title, no text key", 8),
    ]
    assert docs[-1].metadata == {"line": 9, "text_from": "title"} and docs[0].metadata == {"line": 1}
    assert all(d.kind == "jsonl" and d.source == f"{tmp_path}/corpus.jsonl" for d in docs)
    assert docs[0].content_hash == hashlib.sha256(lines[0].encode()).hexdigest()
    assert [s.reason.split(":")[0] for s in skips] == ["line 4", "line 5", "line 6"]
    assert "invalid JSON" in skips[0].reason and '"text"' in skips[1].reason and "object" in skips[2].reason


def test_jsonl_many_bad_lines_summarised(tmp_path):
    write(tmp_path / "bad.jsonl", "\n".join(["{oops"] * 30))
    docs, skips = collect([tmp_path / "bad.jsonl"])
    assert docs == [] and len(skips) == 11 and "20 more malformed lines" in skips[-1].reason


def test_kind_of():
    assert kind_of("a/README.md") == ("markdown", None)
    assert kind_of("Makefile") == ("code", "make")
    assert kind_of("x.JSONL") == ("jsonl", None)
    assert kind_of("x.weird") == ("text", None)
