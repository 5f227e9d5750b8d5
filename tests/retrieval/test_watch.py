"""`knnrag watch`: a collection that follows its files. A real watchfiles watcher in a thread over a
temp folder and a "hash-64" store: an edit, a new file, a deletion and a burst, each waited for with
a bound; the ignore rules agree with `index`'s walker file by file; the CLI stops on SIGTERM."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retrieval.ingest.ignored import IgnoreRules
from retrieval.ingest.sources import iter_sources
from retrieval.store.docstore import DocStore
from retrieval.store.watch import Follower, WatchConfig
from retrieval.types import Skip

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
SENT = " is a word that this test looks for in a sentence long enough to pass the quality filter.\n"  # bound on every wait: the batches themselves take well under a second here


def wait_for(pred, what: str, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sources(store) -> set[str]:
    return {r["source"] for r in store.list_sources(limit=1000)["sources"]}


def hits(store, word: str) -> set[str]:
    return {h.source for h in store.search(word, k=20, mode="bm25")}


@pytest.fixture
def watched(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nalpha bravo charlie" + SENT)
    (docs / "sub" / "b.md").write_text("# B\n\nhotel india juliet" + SENT)
    (docs / ".gitignore").write_text("secret.md\nbuild/\n")
    store = DocStore.open(tmp_path / "store", embedder="hash-64")
    follower = Follower(store, [str(docs)], WatchConfig(step_ms=200))
    batches: queue.Queue = queue.Queue()
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=follower.run, args=(stop,), kwargs={"on_batch": batches.put, "ready": ready}, daemon=True)
    t.start()
    assert ready.wait(WAIT_S), "the watcher never became ready"
    yield {"docs": docs, "store": store, "batches": batches, "stop": stop, "thread": t}
    stop.set()
    t.join(WAIT_S)
    assert not t.is_alive(), "the watcher did not stop"
    store.close()


@pytest.mark.slow  # waits on real time (watchers, queued writes, generation): 2-4 s alone
def test_watch_follows_edits_new_files_deletions_and_ignores(watched):
    docs, store, batches = watched["docs"], watched["store"], watched["batches"]
    first = batches.get(timeout=WAIT_S)  # the catch-up walk
    assert first.report["added"] == 2 and first.resync
    assert sources(store) == {f"{docs}/a.md", f"{docs}/sub/b.md"}

    (docs / "a.md").write_text("# A\n\nalpha bravo zanzibar" + SENT)  # an edit
    wait_for(lambda: f"{docs}/a.md" in hits(store, "zanzibar"), "the edit")
    assert not hits(store, "charlie")

    (docs / "sub" / "c.md").write_text("# C\n\nquokka wombat" + SENT)  # a new file
    (docs / "secret.md").write_text("# S\n\nplatypus" + SENT)  # .gitignore'd
    (docs / "build").mkdir()
    (docs / "build" / "out.md").write_text("# O\n\nplatypus" + SENT)  # in an ignored folder
    wait_for(lambda: hits(store, "quokka"), "the new file")
    time.sleep(0.5)
    assert not hits(store, "platypus") and f"{docs}/secret.md" not in sources(store)

    (docs / "sub" / "b.md").unlink()  # a deletion
    wait_for(lambda: f"{docs}/sub/b.md" not in sources(store), "the deletion")
    assert not hits(store, "juliet")

    (docs / "new" / "deep").mkdir(parents=True)  # a new folder: walked whole
    (docs / "new" / "deep" / "d.md").write_text("# D\n\nxylophone" + SENT)
    wait_for(lambda: hits(store, "xylophone"), "a file in a new folder")
    assert sources(store) == {f"{docs}/a.md", f"{docs}/sub/c.md", f"{docs}/new/deep/d.md"}


def test_a_burst_is_one_batch_and_one_generation(watched):
    docs, store, batches = watched["docs"], watched["store"], watched["batches"]
    batches.get(timeout=WAIT_S)
    gen0 = store.list_sources()["generation"]
    burst = docs / "burst"
    burst.mkdir()
    time.sleep(0.5)  # the folder's own batch (walked whole) first
    wait_for(lambda: store.list_sources()["generation"] >= gen0, "the folder batch")
    while not batches.empty():
        batches.get()
    gen1 = store.list_sources()["generation"]
    for i in range(300):
        (burst / f"f{i:03d}.md").write_text(f"# F{i}\n\nburstword number{i}" + SENT)
    wait_for(lambda: len(store.list_sources(source=f"{burst}/*", limit=1000)["sources"]) == 300, "the burst")
    got = [batches.get(timeout=WAIT_S)]
    while not batches.empty():
        got.append(batches.get())
    added = [b.report["added"] for b in got if b.report]
    assert added == [300], added
    assert store.list_sources()["generation"] == gen1 + 1


def test_stop_is_prompt(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.md").write_text("# X\n\nhello" + SENT)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as store:
        follower = Follower(store, [str(tmp_path / "d")], WatchConfig(step_ms=50))
        stop, ready = threading.Event(), threading.Event()
        t = threading.Thread(target=follower.run, args=(stop,), kwargs={"ready": ready}, daemon=True)
        t.start()
        assert ready.wait(WAIT_S)
        t0 = time.monotonic()
        stop.set()
        t.join(WAIT_S)
        assert not t.is_alive() and time.monotonic() - t0 < 5.0


def _tree(base: Path) -> Path:
    root = base / "proj"
    for rel, text in {
        "a.md": "a", "b.log": "b", "keep/c.md": "c", "keep/d.tmp": "d", "keep/.gitignore": "!d.tmp\n*.md\n",
        "keep/deeper/e.md": "e", "skip/f.md": "f", "node_modules/g.md": "g", ".git/h.md": "h", "x/y/z.rst": "z",
        ".gitignore": "*.log\n*.tmp\nskip/\n/x/y\n", "docs/build/i.md": "i", "docs/j.txt": "j", ".DS_Store": "k",
    }.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.mark.parametrize("exclude", [(), ("build/", "*.txt")])
def test_ignore_rules_agree_with_the_walker(tmp_path, exclude):
    root = _tree(tmp_path)
    walked = {d.source for d in iter_sources([str(root)], exclude=exclude) if not isinstance(d, Skip)}
    rules = IgnoreRules(str(root), exclude)
    every = [p for p in root.rglob("*") if p.is_file()]
    judged = {rules.source(rules.rel(str(p))) for p in every if not rules.ignored(rules.rel(str(p)))}
    assert judged == walked
    assert len(walked) >= 2 and len(every) - len(walked) >= 8  # both sides are exercised


def test_missing_paths_are_deletions(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for n in ("x", "y"):
        (d / f"{n}.md").write_text(f"# {n}\n\nword{n}" + SENT)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as store:
        store.index_paths([str(d)])
        (d / "x.md").unlink()
        rep = store.index_paths([str(d / "x.md"), str(d / "y.md")], missing_ok=True)
        assert rep.removed == 1 and rep.unchanged == 1
        assert sources(store) == {f"{d}/y.md"}
        assert store.index_paths([str(d / "nope.md")], missing_ok=True).removed == 0  # nothing known: a no-op


def _found(store_dir: Path, word: str) -> bool:
    from retrieval.errors import KnnragError

    try:
        with DocStore.open(store_dir, read_only=True) as store:
            return bool(hits(store, word))
    except KnnragError:  # not created yet
        return False


@pytest.mark.slow  # a real subprocess: ~7 s here
def test_cli_watch_stops_on_sigterm_and_logs_to_stderr(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha" + SENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-c", "import sys; from retrieval.cli.root import main; sys.exit(main())"]
    p = subprocess.Popen([*cli, "watch", str(docs), "--store", str(tmp_path / "s"), "--embedder", "hash-64",
                          "--debounce-ms", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: _found(tmp_path / "s", "alpha"), "the catch-up", 60)
        (docs / "b.md").write_text("# B\n\nbravo" + SENT)
        wait_for(lambda: _found(tmp_path / "s", "bravo"), "the new file", 60)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT_S)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out == "" and "watch: stopped" in err and "1 added" in err and "SIGTERM" in err, err
    listing = subprocess.run([*cli, "sources", "--store", str(tmp_path / "s"), "--json"], capture_output=True, text=True,
                             env=env, timeout=120)
    page = json.loads(listing.stdout)
    assert [r["source"] for r in page["sources"]] == [f"{docs}/a.md", f"{docs}/b.md"] and page["total"] == 2


def test_cli_sources_pages_in_text_and_json(tmp_path, capsys):
    from retrieval.cli.root import main

    d = tmp_path / "d"
    d.mkdir()
    for n in range(5):
        (d / f"f{n}.md").write_text(f"# F{n}\n\nfile number{n}" + SENT)
    store = str(tmp_path / "s")
    assert main(["index", str(d), "--store", store, "--embedder", "hash-64", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert main(["sources", "--store", store, "--limit", "2", "--offset", "2", "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in page["sources"]] == [f"{d}/f2.md", f"{d}/f3.md"]
    assert page["total"] == 5 and page["next_offset"] == 4 and page["sources"][0]["chunks"] == 1
    assert page["sources"][0]["kind"] == "markdown" and page["sources"][0]["pages"] is None
    assert page["sources"][0]["indexed_at"].endswith("Z")
    assert main(["sources", "--store", store, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "f0.md" in out and "f2.md" not in out and "sources 1-2 of 5; next page: --offset 2" in out
    assert main(["sources", "--store", store, "--source", "*/f4.md", "--json"]) == 0
    assert [r["source"] for r in json.loads(capsys.readouterr().out)["sources"]] == [f"{d}/f4.md"]
    assert main(["sources", "--store", store, "--limit", "0"]) == 2
    assert "limit must be an integer 1-1000" in capsys.readouterr().err
    assert main(["search", "file", "--store", store, "--filter", "kind=pdf"]) == 2
    assert "unknown kind 'pdf'" in capsys.readouterr().err
    assert main(["search", "file", "--store", store, "--where", '{"kind": {"$like": "m"}}']) == 2
    err = capsys.readouterr().err
    assert "unknown operator '$like'" in err and "$nin" in err
