"""Store safety: read-only stores, the writer lock, snapshots during writes, lazy loading, no pickle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import StoreWriteError
from retrieval.store.docstore import DocStore


@pytest.fixture()
def store(tmp_path):
    s = DocStore.open(tmp_path / "store", embedder="hash-64")
    yield s
    s.close()


def test_read_only_open(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
    with DocStore.open(tmp_path / "s", read_only=True) as s:
        assert s.search("hello")[0].text == "hello world"
        with pytest.raises(StoreWriteError):
            s.add_texts(["nope"])


READ_ONLY_SCRIPT = """
import sys
from retrieval.store.docstore import DocStore
from retrieval.errors import StoreWriteError
s = DocStore.open(sys.argv[1])
print(s.search("hello")[0].text)
try:
    s.add_texts(["nope"])
except StoreWriteError as e:
    print("StoreWriteError:", e.message, "|", e.hint)
"""


def _make_read_only(root: Path) -> tuple[list, dict]:
    """Make `root` unwritable for this process: chmod for normal users; root ignores permissions,
    so as root use the immutable attribute (chattr +i), which stops root too."""
    if os.geteuid() != 0:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        undo = ["chmod", "-R", "u+w", str(root)]
    else:
        r = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a directory read-only for root here: {r.stderr.decode()[:200]}")
        undo = ["chattr", "-R", "-i", str(root)]
    return undo, {}


def test_read_only_directory(tmp_path):
    """A store in a directory the user cannot write: searches work, writes fail clearly."""
    root = tmp_path / "ro"
    with DocStore.open(root, embedder="hash-64") as s:
        s.add_texts(["hello world"])
    undo, _ = _make_read_only(root)
    try:
        out = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(root)], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(undo, check=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "hello world"
    assert "StoreWriteError: " in out.stdout and "read-only" in out.stdout


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from retrieval.store.durable import WriterLock
with WriterLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_second_writer_gets_store_write_error(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
        p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        try:
            assert p.stdout.readline().strip() == "locked"
            with pytest.raises(StoreWriteError, match="another process") as ei:
                s.add_texts(["second"])
            assert "wait" in ei.value.hint
            assert s.search("hello")[0].text == "hello world"  # reads still work
        finally:
            p.kill()
            p.wait()
        s.add_texts(["second"])  # the kernel released the lock
        assert s.stats("default")["chunks"] == 2


def test_readers_see_committed_snapshots_during_writes(store):
    store.add_texts([f"seed text number {i}" for i in range(20)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                hits = store.search("text number", k=5)
                assert len(hits) == 5
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(10):
        store.add_texts([f"more text number {i}"])
    stop.set()
    t.join()
    assert not errors
    assert store.verify()["chunks"] == 30


def test_open_and_search_do_not_import_torch(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
    code = (
        "import sys\nfrom retrieval.store.docstore import DocStore\n"
        f"s = DocStore.open({str(tmp_path / 's')!r}, read_only=True)\n"
        "s.stats(); s.list_collections()\n"
        "s.search('hello')\n"
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers', 'bm25s') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_pickle_in_store_files(store):
    store.add_texts(["some text", "more text"])
    gens = list((store.path / "default").glob("gen-*"))
    assert len(gens) == 1
    for f in gens[0].rglob("*.npy"):
        np.load(f, allow_pickle=False)
    manifest = json.loads((store.path / "default" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["embedder"]["model_id"] == "hash-64@v1"
    assert manifest["embedder"]["dim"] == 64 and manifest["metric"] == "inner_product" and "chunker" in manifest
    assert manifest["index"]["factory"] == "auto"
