"""`knnrag index | search | stats | delete | collections` end to end, in real subprocesses:
--json prints exactly one JSON document (JSON lines for a batch), errors are one JSON object."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HIT_FIELDS = {"id", "score", "scores", "text", "source", "start_char", "end_char", "start_line", "end_line",
              "heading", "metadata", "doc_id", "collection"}
CLI = [sys.executable, "-c", "import sys; from retrieval.cli.root import main; sys.exit(main())"]


def knnrag(*args: str, cwd: Path, check: bool = True, probe: bool = False) -> subprocess.CompletedProcess:
    cmd = list(CLI)
    if probe:  # report which heavy modules the command imported (on stderr, after it ran)
        cmd[2] = ("import sys, atexit\natexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(m for m in ('torch', "
                  "'transformers', 'sentence_transformers', 'bm25s') if m in sys.modules) + '\\n'))\n" + cmd[2])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert out.returncode == 0, out.stderr + out.stdout
    return out


def one_json(out: subprocess.CompletedProcess):
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def _write_corpus(root: Path) -> Path:
    d = root / "docs"
    (d / "guide").mkdir(parents=True)
    (d / "README.md").write_text("# Project\n\nInstall the package with pip and run the indexer on your notes.\n\n"
                                 "## Usage\n\nSearch your documents from the command line with hybrid retrieval.\n")
    (d / "guide" / "setup.rst").write_text("Setup\n=====\n\nConfigure the virtual environment before installing anything.\n")
    (d / "code.py").write_text("def add(a, b):\n    \"\"\"Add two numbers and return the sum.\"\"\"\n    return a + b\n")
    (d / "blob.bin").write_bytes(b"\x00\xff\x00binary")
    (d / "corpus.jsonl").write_text(
        json.dumps({"_id": "doc-7", "title": "Glaciers", "text": "Glaciers carve valleys slowly over thousands of years."}) + "\n"
        + json.dumps({"_id": "doc-8", "title": "Deserts", "text": "Deserts receive very little rain and host hardy plants."}) + "\n")
    return d


@pytest.fixture()
def corpus(tmp_path):
    return _write_corpus(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One indexed store shared by the tests that only read it (or fail before writing)."""
    root = tmp_path_factory.mktemp("built")
    _write_corpus(root)
    _index(root)
    return root


def _rel(source: str, tmp_path) -> str:
    """Sources are stored as canonical absolute paths; the tests compare them from the work folder."""
    assert source.startswith("/"), source
    return os.path.relpath(source, os.path.realpath(tmp_path))


def _index(tmp_path, *extra):
    return one_json(knnrag("index", "docs", "--store", "store", "--embedder", "hash-64", "--json", *extra, cwd=tmp_path))


@pytest.mark.slow  # several CLI subprocesses
def test_index_and_search_json(tmp_path, corpus):
    rep = _index(tmp_path)
    assert rep["files_seen"] == 4 and rep["added"] == 4 and rep["chunks_added"] >= 5
    assert [_rel(s["source"], tmp_path) for s in rep["skipped"]] == ["docs/blob.bin"]
    assert set(rep["dropped"]) == {"empty", "low_quality", "exact_duplicate", "near_duplicate"}
    rep2 = _index(tmp_path)
    assert rep2["unchanged"] == 4 and rep2["chunks_added"] == 0
    for mode in ("dense", "bm25", "hybrid"):
        res = one_json(knnrag("search", "install package pip", "--store", "store", "--mode", mode, "-k", "3", "--json", cwd=tmp_path))
        assert res["mode"] == mode and 1 <= len(res["hits"]) <= 3
        hit = res["hits"][0]
        assert set(hit) == HIT_FIELDS and _rel(hit["source"], tmp_path) == "docs/README.md"
        text = (tmp_path / hit["source"]).read_text()
        assert text[hit["start_char"] : hit["end_char"]] == hit["text"]
        assert hit["start_line"] == 1 and hit["end_line"] >= hit["start_line"]
    res = one_json(knnrag("search", "glaciers valleys", "--store", "store", "--json", cwd=tmp_path))
    assert res["hits"][0]["doc_id"] == "doc-7"
    res = one_json(knnrag("search", "install", "--store", "store", "--filter", "kind=rst", "--json", cwd=tmp_path))
    assert res["hits"] and all(_rel(h["source"], tmp_path) == "docs/guide/setup.rst" for h in res["hits"])
    res = one_json(knnrag("search", "numbers", "--store", "store", "--filter", "source=docs/*.py", "--mmr", "--json", cwd=tmp_path))
    assert [_rel(h["source"], tmp_path) for h in res["hits"]] == ["docs/code.py"]
    human = knnrag("search", "install package", "--store", "store", "-k", "2", cwd=tmp_path).stdout
    assert "docs/README.md:1-" in human


@pytest.mark.slow  # several CLI subprocesses
def test_batch_queries(tmp_path, corpus):
    _index(tmp_path)
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "glaciers carve valleys"}) + "\n" + json.dumps({"_id": "q2", "text": "deserts rain"}) + "\n")
    out = knnrag("search", "--queries", "queries.jsonl", "--store", "store", "-k", "100", "--mode", "hybrid", "--json", cwd=tmp_path)
    recs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [r["query_id"] for r in recs] == ["q1", "q2"]
    assert recs[0]["hits"][0]["doc_id"] == "doc-7" and recs[1]["hits"][0]["doc_id"] == "doc-8"
    assert all(set(h) == HIT_FIELDS for r in recs for h in r["hits"])
    (tmp_path / "plain.txt").write_text("glaciers\n\nsetup environment\n")
    out = knnrag("search", "--queries", "plain.txt", "--store", "store", "--mode", "bm25", "--json", cwd=tmp_path)
    recs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [r["query_id"] for r in recs] == ["1", "3"] and _rel(recs[1]["hits"][0]["source"], tmp_path) == "docs/guide/setup.rst"


@pytest.mark.slow  # several CLI subprocesses
def test_stats_collections_delete(tmp_path, corpus):
    _index(tmp_path, "--collection", "notes", "--tag", "mine")
    st = one_json(knnrag("stats", "--store", "store", "--json", cwd=tmp_path))
    assert [c["name"] for c in st["collections"]] == ["notes"] and st["collections"][0]["embedder"] == "hash-64@v1"
    cols = one_json(knnrag("collections", "--store", "store", "--json", cwd=tmp_path))
    assert cols["collections"][0]["name"] == "notes"
    res = one_json(knnrag("search", "install", "--store", "store", "--collection", "notes", "--filter", "tags=mine", "--json", cwd=tmp_path))
    assert res["hits"]
    d = one_json(knnrag("delete", "--store", "store", "--collection", "notes", "--source", "docs/README.md", "--json", cwd=tmp_path))
    assert d["removed_sources"] == 1 and d["removed_chunks"] >= 1
    removed = d["removed_chunks"]
    res = one_json(knnrag("search", "glaciers", "--store", "store", "--collection", "notes", "--json", cwd=tmp_path))
    hid = res["hits"][0]["id"]
    d = one_json(knnrag("delete", "--store", "store", "--collection", "notes", "--id", hid, "--json", cwd=tmp_path))
    assert d == {"removed_chunks": 1, "removed_sources": 0}
    st2 = one_json(knnrag("stats", "--store", "store", "--collection", "notes", "--json", cwd=tmp_path))
    assert st2["chunks"] == st["collections"][0]["chunks"] - removed - 1


# one CLI process per case (~1 s CPU each): the fast lane runs every third case, the full lane all
SUBPROCESS_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "args,type_,needle",
    [
        (["search", "", "--store", "store"], "InvalidInputError", "empty"),
        pytest.param(["search", "x", "--store", "store", "-k", "0"], "InvalidInputError", "k must be", marks=SUBPROCESS_SLOW),
        pytest.param(["search", "x", "--store", "store", "-k", "1000000"], "InvalidInputError", "maximum", marks=SUBPROCESS_SLOW),
        (["search", "x", "--store", "store", "--collection", "nope"], "NotFoundError", "default"),
        pytest.param(["search", "x", "--store", "nostore"], "NotFoundError", "no knnrag store", marks=SUBPROCESS_SLOW),
        pytest.param(["search", "x", "--store", "store", "--filter", "novalue"], "InvalidInputError", "KEY=VALUE", marks=SUBPROCESS_SLOW),
        (["search", "x", "--store", "store", "--embedder", "hash-32"], "MismatchError", "hash-64"),
        pytest.param(["index", "missing-dir", "--store", "store"], "InvalidInputError", "not found", marks=SUBPROCESS_SLOW),
        pytest.param(["index", "docs", "--store", "store", "--embedder", "hash-32"], "MismatchError", "hash-64", marks=SUBPROCESS_SLOW),
        (["index", "docs", "--store", "store", "--index-factory", "Bogus99"], "InvalidInputError", "factory"),
        pytest.param(["delete", "--store", "store", "--id", "424242"], "NotFoundError", "nothing matched", marks=SUBPROCESS_SLOW),
        pytest.param(["search", "--queries", "nofile.jsonl", "--store", "store"], "InvalidInputError", "queries file", marks=SUBPROCESS_SLOW),
        (["search", "rivers", "--store", "store", "--min-score", "nan"], "InvalidInputError", "finite"),
        pytest.param(["search", "rivers", "--store", "store", "--min-score", "inf", "--mode", "bm25"], "InvalidInputError", "finite", marks=SUBPROCESS_SLOW),
    ],
)
def test_errors_are_one_json_object(built, args, type_, needle):
    out = knnrag(*args, "--json", cwd=built, check=False)
    assert out.returncode == 2, out.stderr
    err = one_json(out)
    assert err["type"] == type_ and needle in err["error"] + err["hint"] and err["hint"]
    assert "Traceback" not in out.stderr
    plain = knnrag(*args, cwd=built, check=False)
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "hint: " in plain.stderr


def test_empty_folder_and_large_file(tmp_path):
    (tmp_path / "empty").mkdir()
    out = knnrag("index", "empty", "--store", "store", "--embedder", "hash-64", "--json", cwd=tmp_path, check=False)
    assert out.returncode == 2 and "nothing to index" in one_json(out)["error"]
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "huge.txt").write_bytes(b"word " * (11 * 1024 * 1024))  # 55 MB
    (tmp_path / "big" / "small.txt").write_text("A small file with a few real words in it.\n")
    rep = one_json(knnrag("index", "big", "--store", "store", "--embedder", "hash-64", "--json", cwd=tmp_path))
    assert rep["added"] == 1 and _rel(rep["skipped"][0]["source"], tmp_path) == "big/huge.txt" and "MB" in rep["skipped"][0]["reason"]


def test_search_process_does_not_import_torch(built):
    out = knnrag("search", "install", "--store", "store", "--json", cwd=built, probe=True)
    assert out.stderr.strip().endswith("MODULES"), out.stderr


@pytest.mark.integration
def test_real_minilm_end_to_end(tmp_path, corpus):
    """The bundled MiniLM: index with torch, search in a fresh process without torch."""
    rep = one_json(knnrag("index", "docs", "--store", "store", "--json", cwd=tmp_path))
    assert rep["added"] == 4
    st = one_json(knnrag("stats", "--store", "store", "--collection", "default", "--json", cwd=tmp_path))
    assert st["embedder"].startswith("all-MiniLM-L6-v2@") and st["dim"] == 384 and st["chunker"]["max_tokens"] == 254
    out = knnrag("search", "function that sums two values", "--store", "store", "--mode", "dense", "--json", cwd=tmp_path, probe=True)
    res = json.loads(out.stdout.splitlines()[0])
    assert _rel(res["hits"][0]["source"], tmp_path) == "docs/code.py" and 0.2 < res["hits"][0]["scores"]["dense"] <= 1.0
    assert out.stderr.strip().endswith("MODULES"), out.stderr
    res = one_json(knnrag("search", "frozen rivers shaping the land", "--store", "store", "--json", cwd=tmp_path))
    assert res["hits"][0]["doc_id"] == "doc-7"
