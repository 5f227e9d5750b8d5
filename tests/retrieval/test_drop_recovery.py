"""Dropping a collection is one recoverable step: its sidecars (lm's kNN datastore) go with it, and a
drop killed at any point is finished or rolled back by the next open (issue 30, cases 1 and 5)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from retrieval.store import admin
from retrieval.store.docstore import DocStore


def _store(path):
    s = DocStore.open(path, embedder="hash-64")
    s.add_texts(["alpha text", "beta text"], collection="kx")
    s.add_texts(["other"], collection="keep")
    side = path / ".knn" / "kx"
    side.mkdir(parents=True)
    (side / "manifest.json").write_text("{}")
    return s


def test_drop_takes_its_sidecars(tmp_path):
    s = _store(tmp_path / "s")
    assert admin.drop_collection(s, "kx")["sidecars"] == 1
    assert not (tmp_path / "s" / ".knn" / "kx").exists()
    assert [c["name"] for c in s.list_collections()] == ["keep"]
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".dropped-")]


def test_legacy_trash_does_not_break_listing(tmp_path):
    s = _store(tmp_path / "s")
    s.close()
    os.rename(tmp_path / "s" / "kx", tmp_path / "s" / ".dropped-kx-0123abcd")  # what an older drop left when killed
    s = DocStore.open(tmp_path / "s")
    assert [c["name"] for c in s.list_collections()] == ["keep"]
    assert not (tmp_path / "s" / ".dropped-kx-0123abcd").exists()
    assert not (tmp_path / "s" / ".knn" / "kx").exists()  # the committed drop's sidecar went too


def test_hidden_folder_with_a_manifest_is_never_listed(tmp_path):
    s = _store(tmp_path / "s")
    (tmp_path / "s" / ".dropped-x-1").mkdir()
    (tmp_path / "s" / ".dropped-x-1" / "manifest.json").write_text("{}")
    assert [c["name"] for c in s.list_collections()] == ["keep", "kx"]  # read-only use: listed around it
    assert s.stats()["chunks"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("step,dropped", [("drop_recorded", False), ("drop_committed", True)])
def test_drop_killed_midway_is_finished_or_rolled_back(tmp_path, step, dropped):
    s = _store(tmp_path / "s")
    s.close()
    code = ("import sys; from retrieval.store.docstore import DocStore; from retrieval.store import admin;"
            f"admin.drop_collection(DocStore.open({str(tmp_path / 's')!r}), 'kx')")
    env = {**os.environ, "KNNRAG_TEST_PAUSE_AT": step}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "KNNRAG-PAUSED-AT" not in line and p.poll() is None:
        line = p.stderr.readline()
    assert p.poll() is None, "the writer should be paused at the checkpoint"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [d for d in (tmp_path / "s").iterdir() if d.name.startswith(".dropped-")]
    s = DocStore.open(tmp_path / "s")
    names = [c["name"] for c in s.list_collections()]
    assert names == (["keep"] if dropped else ["keep", "kx"])
    assert (tmp_path / "s" / ".knn" / "kx").exists() is (not dropped)
    assert not [d for d in (tmp_path / "s").iterdir() if d.name.startswith(".dropped-")]
    if not dropped:
        assert s.verify("kx")["chunks"] == 2
