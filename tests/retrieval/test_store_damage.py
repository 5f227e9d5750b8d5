"""Damage and full disks: checksums recorded at commit and checked by `knnrag verify`, tampered
files reported as error + hint (exit 2) instead of tracebacks, and failed writes that leave the
last committed state and no partial generation behind."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from retrieval.cli import root as cli_root
from retrieval.cli import store as store_cli
from retrieval.cli import verify as verify_cli
from retrieval.cli.verify import verify_store
from retrieval.errors import CorruptStoreError, StoreWriteError
from retrieval.index import vector_index
from retrieval.store import chunk_db
from retrieval.store import collection as collection_mod
from retrieval.store.docstore import DocStore
from retrieval.store.verify import NO_CHECKSUMS

WORDS = "alpha beta gamma delta river mountain forest ocean parser server cache token".split()


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 12)) + f" doc{i}" for i in range(n)]


@pytest.fixture()
def store_dir(tmp_path):
    path = tmp_path / "store"
    with DocStore.open(path, embedder="hash-64") as s:
        s.add_texts(texts(30), ids=[f"t{i}" for i in range(30)])
        s.add_texts(texts(5, seed=1), ids=[f"u{i}" for i in range(5)])
    return path


def gen_dir(store_dir):
    (g,) = [p for p in (store_dir / "default").iterdir() if p.name.startswith("gen-")]
    return g


def cli(monkeypatch, capsys, *argv):
    """The real CLI root (error handling, exit codes) with the verify command registered as its
    entry point will register it once installed."""
    monkeypatch.setattr(cli_root, "_registrars", lambda: [store_cli.register, verify_cli.register])
    code = cli_root.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def garble(path, offset_from_end=8):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- checksums
def test_checksums_recorded_and_verify_clean(store_dir, monkeypatch, capsys):
    files = json.loads((gen_dir(store_dir) / "gen.json").read_text())["files"]
    assert {"index.faiss", "tombstones.npy", "bm25/data.csc.index.npy"} <= set(files)
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in files.values())
    report = verify_store(store_dir)
    assert report["ok"] and report["collections"][0]["checksums"].startswith("ok (")
    code, out, _ = cli(monkeypatch, capsys, "verify", "--store", str(store_dir), "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_garbled_bm25_array_of_the_right_size_is_found(store_dir, monkeypatch, capsys):
    target = gen_dir(store_dir) / "bm25" / "data.csc.index.npy"
    garble(target)
    with DocStore.open(store_dir, embedder="hash-64", read_only=True) as s:
        assert s.search("alpha river", k=3, mode="bm25")  # opens: the size is right, only the digest differs
    code, out, err = cli(monkeypatch, capsys, "verify", "--store", str(store_dir), "--json")
    report = json.loads(out)
    assert code == 2 and report["ok"] is False and report["collections"][0]["checksums"] == "mismatch"
    assert any("data.csc.index.npy is altered" in p for p in report["collections"][0]["problems"])
    code, out, err = cli(monkeypatch, capsys, "verify", "--store", str(store_dir), "--collection", "default")
    assert code == 2 and "DAMAGED" in out and "error:" in err and "hint:" in err


def test_resized_file_is_refused_at_open(store_dir, monkeypatch, capsys):
    with open(gen_dir(store_dir) / "index.faiss", "ab") as f:
        f.write(b"\0" * 16)
    with DocStore.open(store_dir, embedder="hash-64", read_only=True) as s, pytest.raises(CorruptStoreError, match="index.faiss has"):
        s.search("alpha", k=3, mode="bm25")
    code, out, err = cli(monkeypatch, capsys, "search", "alpha", "--store", str(store_dir), "--mode", "bm25")
    assert code == 2 and err.startswith("error: ") and "hint: " in err


def test_old_store_without_checksums_still_opens(store_dir):
    record_path = gen_dir(store_dir) / "gen.json"
    record = json.loads(record_path.read_text())
    del record["files"]
    record_path.write_text(json.dumps(record))
    with DocStore.open(store_dir, embedder="hash-64", read_only=True) as s:
        assert len(s.search("alpha", k=3, mode="bm25")) == 3
    report = verify_store(store_dir)
    assert report["ok"] and report["collections"][0]["checksums"] == NO_CHECKSUMS


# ----------------------------------------------------------------------------- tampered files
def edit_manifest(store_dir, fn):
    path = store_dir / "default" / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_manifest_embedder_string_is_an_error_not_a_traceback(store_dir, monkeypatch, capsys):
    edit_manifest(store_dir, lambda m: m.update(embedder="x"))
    code, out, err = cli(monkeypatch, capsys, "search", "alpha", "--store", str(store_dir), "--mode", "bm25")
    assert code == 2 and '"embedder" must be an object' in err and "hint:" in err
    code, out, err = cli(monkeypatch, capsys, "verify", "--store", str(store_dir), "--json")
    assert code == 2 and '"embedder"' in json.loads(out)["collections"][0]["problems"][0]


def test_dim_mismatch_is_reported(store_dir, monkeypatch, capsys):
    edit_manifest(store_dir, lambda m: m["embedder"].update(dim=32))
    code, out, err = cli(monkeypatch, capsys, "verify", "--store", str(store_dir), "--json")
    report = json.loads(out)
    assert code == 2 and "dim" in report["collections"][0]["problems"][0]
    with DocStore.open(store_dir, read_only=True) as s, pytest.raises(CorruptStoreError):
        s.verify()


def test_vector_blobs_of_another_dimension_are_reported(store_dir):
    con = sqlite3.connect(store_dir / "default" / "chunks.sqlite")
    con.execute("UPDATE chunks SET vec = substr(vec, 1, 128) WHERE id = 3")
    con.commit()
    con.close()
    report = verify_store(store_dir)
    assert not report["ok"] and "do not have the manifest's dimension 64" in report["collections"][0]["problems"][0]


def test_missing_tombstones_is_reported_at_once(store_dir, monkeypatch):
    (gen_dir(store_dir) / "tombstones.npy").unlink()

    def no_retry(seconds):
        raise AssertionError("retried (slept) on a damaged generation instead of reporting it")

    monkeypatch.setattr(collection_mod.time, "sleep", no_retry)
    with DocStore.open(store_dir, embedder="hash-64", read_only=True) as s, pytest.raises(CorruptStoreError, match="tombstones.npy"):
        s.search("alpha", k=3, mode="bm25")


def test_missing_generation_folder_is_reported_after_one_retry(store_dir, monkeypatch):
    shutil.rmtree(gen_dir(store_dir))
    slept: list[float] = []
    monkeypatch.setattr(collection_mod.time, "sleep", slept.append)
    with DocStore.open(store_dir, embedder="hash-64", read_only=True) as s, pytest.raises(CorruptStoreError, match="gen-2 is missing"):
        s.search("alpha", k=3, mode="bm25")
    assert len(slept) == 1  # one retry (a writer may have just replaced it), not 50 (25 s)


# ----------------------------------------------------------------------------- full disks
def assert_intact(store_dir, n=35):
    gens = [p.name for p in (store_dir / "default").iterdir() if p.name.startswith("gen-")]
    assert gens == ["gen-2"], gens  # no partial gen-3
    with DocStore.open(store_dir, embedder="hash-64") as s:
        assert s.verify()["chunks"] == n
        assert s.add_texts(["after the failure: writes work again"], ids=["later"]) == ["later"]


def test_disk_full_during_faiss_write(store_dir, monkeypatch, capsys):
    def full_disk(index, path):
        path.write_bytes(b"IxM2 partial")
        raise RuntimeError("Error in void faiss::write_index: fwrite failed: No space left on device")

    monkeypatch.setattr(vector_index, "write_index", full_disk)
    with DocStore.open(store_dir, embedder="hash-64") as s, pytest.raises(StoreWriteError, match="no space left on device"):
        s.add_texts(["one more"], ids=["x"])
    corpus = store_dir.parent / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nsome words about rivers\n")
    code, out, err = cli(monkeypatch, capsys, "index", str(corpus), "--store", str(store_dir), "--embedder", "hash-64")
    assert code == 2 and err.startswith("error: no space left on device") and "hint:" in err
    monkeypatch.undo()
    assert_intact(store_dir)


def test_disk_full_during_sqlite_commit_reports_sqlite_full(store_dir, monkeypatch):
    real = chunk_db.connect

    def small_disk(path, *, read_only=False):
        conn = real(path, read_only=read_only)
        if not read_only:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={pages}")
        return conn

    monkeypatch.setattr(chunk_db, "connect", small_disk)
    with DocStore.open(store_dir, embedder="hash-64") as s, pytest.raises(StoreWriteError) as e:
        s.add_texts(texts(200, seed=3))
    assert "SQLITE_FULL" in e.value.message and "no space left" in e.value.message
    assert "cannot rollback" not in str(e.value)
    monkeypatch.undo()
    assert_intact(store_dir)


def test_interrupted_generation_write_leaves_no_partial_folder(store_dir, monkeypatch):
    def interrupted(index, path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(vector_index, "write_index", interrupted)
    with DocStore.open(store_dir, embedder="hash-64") as s, pytest.raises(KeyboardInterrupt):
        s.add_texts(["one more"], ids=["x"])
    monkeypatch.undo()
    assert_intact(store_dir)


def test_copy_of_store_verifies(store_dir, tmp_path):
    shutil.copytree(store_dir, tmp_path / "copy")
    assert verify_store(tmp_path / "copy", "default")["ok"]
