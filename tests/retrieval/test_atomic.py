"""Atomic commits: a real writer process is killed with SIGKILL in the middle of commits, then the
store must open with vectors, rows and BM25 consistent and equal to the last committed state.

The writer runs a fixed sequence of commits (index a folder, add, update files, delete by id and by
source, upsert). A reference run without kills records the state after every commit. Crash runs
freeze the writer at a named step of the N-th commit (KNNRAG_TEST_PAUSE_AT=step@N, see
retrieval.store.durable.checkpoint) or after a random delay, kill it with SIGKILL, and compare.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.store.docstore import DocStore

ROOT = Path(__file__).resolve().parents[2]

WRITER = r'''
import json, os, sys
from pathlib import Path
from retrieval.store.docstore import DocStore

os.chdir(sys.argv[1]); factory = sys.argv[2]; ref = os.environ.get("REF_DIR")
corp = Path("corp")  # sources are stored absolute: dump() and _state() compare them from the work folder on
store_dir = Path("store")
words = "alpha beta gamma delta epsilon zeta theta iota kappa lambda river mountain forest ocean".split()

def text(i, n=40):
    return " ".join(words[(i * 7 + j * 3) % len(words)] + ("" if j % 5 else str(i)) for j in range(n))

def write_file(name, i):
    (corp / name).write_text(f"# File {i}\n\n{text(i)}.\n\n## More\n\n{text(i + 100)}.\n", encoding="utf-8")

def dump(step):
    if not ref:
        return
    con = sqlite3.connect(store_dir / "default" / "chunks.sqlite")
    rows = [[i, e, src[src.find("corp/"):] if "/corp/" in src else src, t] for i, e, src, t in
            con.execute("SELECT id, coalesce(ext_id, ''), source, text FROM chunks ORDER BY id").fetchall()]
    con.close()
    (Path(ref) / f"ref-{step}.json").write_text(json.dumps(rows))

import sqlite3
corp.mkdir(parents=True, exist_ok=True)
for i in range(6):
    write_file(f"f{i}.md", i)
kw = {"index_factory": None if factory == "auto" else factory}
s = DocStore.open(store_dir, embedder="hash-64")
def step0(): s.index_paths([corp], **kw)
def step1(): s.add_texts([text(200 + j) for j in range(5)], [{"source": f"api/{j}"} for j in range(5)], ids=[f"a1-{j}" for j in range(5)])
def step2():
    write_file("f1.md", 50); (corp / "f2.md").unlink(); s.index_paths([corp])
def step3(): s.delete(ids=["a1-0", "a1-1"])
def step4(): s.add_texts([text(300 + j) for j in range(5)], ids=[f"a4-{j}" for j in range(5)])
def step5(): s.delete(sources=[str(corp / "f3.md")])
def step6(): s.add_texts([text(999)], ids=["a4-2"])
def step7():
    write_file("f9.md", 9); s.index_paths([corp])
for i, op in enumerate([step0, step1, step2, step3, step4, step5, step6, step7]):
    op()
    dump(i)
    print(f"COMMITTED {i}", flush=True)
'''

STEPS = ["before_index", "faiss_written", "bm25_written", "before_commit", "in_transaction", "after_commit"]
N_COMMITS = 8


def _run_writer(work: Path, factory: str, env_extra: dict, *, wait_for: str | None = None, delay: float | None = None):
    """Start the writer; kill it (SIGKILL) when it reports a pause, or after `delay` seconds.
    Returns the last committed step it printed (-1 for none) and whether it was killed."""
    work.mkdir(parents=True, exist_ok=True)
    script = work.parent / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(script), str(work), factory], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    killed = False
    if wait_for:
        deadline = time.time() + 120
        for line in p.stderr:
            if line.startswith("KNNRAG-PAUSED-AT"):
                assert wait_for in line
                p.send_signal(signal.SIGKILL)
                killed = True
                break
            assert time.time() < deadline
    elif delay is not None:
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed = True
    out, err = p.communicate(timeout=120)
    if not killed:
        assert p.returncode == 0, err
    done = [int(l.split()[1]) for l in out.splitlines() if l.startswith("COMMITTED")]
    return (done[-1] if done else -1), killed


def _state(store_dir: Path):
    """Rows of the committed state, after checking FAISS, BM25 and SQLite agree."""
    with DocStore.open(store_dir, read_only=True) as s:
        assert s.verify()["ok"]
        hits = s.search("alpha river", k=50, mode="hybrid")
        bm = s.search("alpha river", k=50, mode="bm25")
    con = sqlite3.connect(store_dir / "default" / "chunks.sqlite")
    rows = [list(r) for r in con.execute("SELECT id, coalesce(ext_id, ''), source, text FROM chunks ORDER BY id")]
    con.close()
    for r in rows:  # sources are stored absolute: compare them from the writer's work folder on
        r[2] = r[2][r[2].find("corp/"):] if "/corp/" in r[2] else r[2]
    ids = {r[1] or str(r[0]) for r in rows}
    assert {h.id for h in hits} <= ids and {h.id for h in bm} <= ids
    return rows


@pytest.fixture(scope="module", params=["auto", "HNSW16,Flat"])
def reference(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    refdir = base / "states"
    refdir.mkdir()
    last, _ = _run_writer(base / "w", request.param, {"REF_DIR": str(refdir)})
    assert last == N_COMMITS - 1
    states = [json.loads((refdir / f"ref-{i}.json").read_text()) for i in range(N_COMMITS)]
    assert len({json.dumps(s) for s in states}) == N_COMMITS  # every commit changes something
    return request.param, states


def _check_after_crash(store_dir: Path, expected_options: list) -> None:
    if not (store_dir / "default" / "manifest.json").exists():
        assert [] in expected_options  # killed before the first commit created the collection
        return
    rows = _state(store_dir)
    assert rows in expected_options, f"state after crash matches none of the committed states ({len(rows)} rows)"
    # the store stays writable: the kernel dropped the lock, stale generations are collected
    with DocStore.open(store_dir) as s:
        s.add_texts(["after the crash"], ids=["post-crash"])
        assert s.verify()["ok"]
        assert len(list((store_dir / "default").glob("gen-*"))) == 1
        assert s.get(["post-crash"])[0].text == "after the crash"


# every step once per index type, cycling through commit kinds:
# 3 = index update with an edited and a deleted file, 4 = delete by id, 6 = delete by source
@pytest.mark.slow  # kills a writer process at each commit step (crash loop)
@pytest.mark.parametrize("step,commit_no", [(s, (3, 4, 6)[i % 3]) for i, s in enumerate(STEPS)])
def test_kill_at_named_step(reference, tmp_path, step, commit_no):
    factory, states = reference
    last, killed = _run_writer(tmp_path / "w", factory, {"KNNRAG_TEST_PAUSE_AT": f"{step}@{commit_no}"}, wait_for=step)
    assert killed and last == commit_no - 2
    expected = states[commit_no - 1] if step == "after_commit" else states[commit_no - 2]
    _check_after_crash(tmp_path / "w" / "store", [expected])


@pytest.mark.slow  # kills writer processes at random points
def test_kill_after_random_delays(reference, tmp_path):
    factory, states = reference
    rng = random.Random(1234)
    for trial in range(3):
        work = tmp_path / f"w{trial}"
        last, killed = _run_writer(work, factory, {}, delay=rng.uniform(0.5, 4.0))
        options = ([[]] if last < 0 else [states[last]]) + ([states[last + 1]] if last + 1 < N_COMMITS else [])
        _check_after_crash(work / "store", options)
