"""Watch latency (a save -> searchable) and a 1,000-file `git checkout` as one batch, against
re-running `knnrag index` by hand after each change, in the same run.

usage: python -m benchmarks watch [--quick] [--files 1000] [--saves 20] [--embedder SPEC]

A git repository of N Markdown files (a WikiText-2 paragraph each, ../shared/data/wikitext-2), two
branches that differ in every file, one store indexed once with the embedder (default: the bundled
MiniLM). Then:
- ours: `knnrag watch DIR --json` in a subprocess. Each of `--saves` saves appends a sentence with
  a new word to one file; the latency is from before the write until a search (BM25, from this
  process, read-only) finds the word. Then `git checkout` of the other branch: the seconds until
  the watcher's batches have re-indexed every file, and how many batches (index calls, generations)
  that took.
- peer: the watcher stopped, the same saves each followed by `knnrag index DIR` (a fresh process,
  as a user runs it by hand), timed until the word is found; then `git checkout` back and one
  `knnrag index DIR`.
Targets: median save -> searchable <= 2 s; the checkout in 1 batch.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import ROOT, WORK, data_dir, median, percentile, record

PEER = "re-running `knnrag index DIR` (a fresh process) by hand after each change"
NAME = "watch"
CLI = [sys.executable, "-c", "import sys; from retrieval.cli.root import main; sys.exit(main())"]
TIMEOUT_S = 600.0  # any single wait; a run that needs longer is broken, not slow


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=b@e", "-c", "user.name=bench", *args], cwd=repo, check=True,
                   capture_output=True, timeout=300)


def make_repo(base: Path, n: int) -> Path:
    """N files on branch `a`, each changed on branch `b` (one paragraph each, ~1 chunk)."""
    raw = (data_dir("wikitext-2") / "wiki.test.raw").read_text(encoding="utf-8")
    paras = [p.strip() for p in raw.splitlines() if 300 < len(p.strip()) < 900 and not p.startswith(" =")]
    repo = base / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "a")
    for i in range(n):
        d = repo / f"part{i % 10:02d}"
        d.mkdir(exist_ok=True)
        (d / f"note{i:04d}.md").write_text(f"# Note {i}\n\n{paras[i % len(paras)]}\n", encoding="utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a")
    _git(repo, "checkout", "-q", "-b", "b")
    for i in range(n):
        p = repo / f"part{i % 10:02d}" / f"note{i:04d}.md"
        p.write_text(p.read_text(encoding="utf-8") + f"\nRevised on branch b, item {i}.\n", encoding="utf-8")
    _git(repo, "commit", "-q", "-am", "b")
    _git(repo, "checkout", "-q", "a")
    return repo


class Watcher:
    """`knnrag watch --json` in a subprocess; its batch lines land in a queue."""

    def __init__(self, repo: Path, store: Path, embedder: str | None) -> None:
        args = [*CLI, "watch", str(repo), "--store", str(store), "--json"] + (["--embedder", embedder] if embedder else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
        self.batches: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.batches.put((time.perf_counter(), json.loads(line)))

    def next(self) -> tuple[float, dict]:
        return self.batches.get(timeout=TIMEOUT_S)

    def drain(self, quiet_s: float) -> list[tuple[float, dict]]:
        out = []
        try:
            while True:
                out.append(self.batches.get(timeout=quiet_s))
        except queue.Empty:
            return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _wait_found(store, word: str) -> float:
    end = time.perf_counter() + TIMEOUT_S
    while time.perf_counter() < end:
        if store.search(word, k=1, mode="bm25"):
            return time.perf_counter()
        time.sleep(0.02)  # a tighter poll took CPU from the watcher on this 2-core box
    raise RuntimeError(f"{word} never became searchable")


def _save(repo: Path, i: int, n: int, word: str) -> Path:
    p = repo / f"part{(i * 7) % n % 10:02d}" / f"note{(i * 7) % n:04d}.md"
    with p.open("a", encoding="utf-8") as f:
        f.write(f"\nA note added while editing mentions {word} once.\n")
    return p


def saves_watched(repo: Path, reader, n: int, saves: int, tag: str) -> list[float]:
    out = []
    for i in range(saves):
        word = f"zq{tag}w{i}x"
        t0 = time.perf_counter()
        _save(repo, i, n, word)
        out.append(_wait_found(reader, word) - t0)
        time.sleep(0.3)  # let the watcher settle: each save is its own burst
    return out


def saves_by_hand(repo: Path, store: Path, reader, n: int, saves: int, tag: str, embedder: str | None) -> list[float]:
    out = []
    emb = ["--embedder", embedder] if embedder else []
    for i in range(saves):
        word = f"zq{tag}w{i}x"
        t0 = time.perf_counter()
        _save(repo, i, n, word)
        subprocess.run([*CLI, "index", str(repo), "--store", str(store), "--json", *emb], check=True, capture_output=True,
                       env=_env(), timeout=TIMEOUT_S)
        out.append(_wait_found(reader, word) - t0)
    return out


def burst_watched(repo: Path, watcher: Watcher, n: int) -> tuple[float, int, list[dict]]:
    """git checkout b: (seconds until every file was re-indexed, batches, their reports)."""
    _git(repo, "commit", "-q", "-am", "saves")  # a clean tree to switch from (.git is not watched)
    t0 = time.perf_counter()
    _git(repo, "checkout", "-q", "b")
    done, reports, t_end = 0, [], t0
    while done < n:
        t_end, b = watcher.next()
        reports.append(b)
        done += (b.get("report") or {}).get("updated", 0) + (b.get("report") or {}).get("added", 0)
    reports += [b for _, b in watcher.drain(2.0)]  # any late batch counts against us
    return t_end - t0, len(reports), reports


def burst_by_hand(repo: Path, store: Path, embedder: str | None) -> float:
    _git(repo, "commit", "-q", "-am", "saves")
    t0 = time.perf_counter()
    _git(repo, "checkout", "-q", "a")
    emb = ["--embedder", embedder] if embedder else []
    subprocess.run([*CLI, "index", str(repo), "--store", str(store), "--json", *emb], check=True, capture_output=True,
                   env=_env(), timeout=TIMEOUT_S)
    return time.perf_counter() - t0


def run(n: int, saves: int, embedder: str | None, quick: bool) -> int:
    from retrieval.store.docstore import DocStore

    base = WORK / "watch"
    shutil.rmtree(base, ignore_errors=True)
    repo = make_repo(base, n)
    store = base / "store"
    emb = ["--embedder", embedder] if embedder else []
    subprocess.run([*CLI, "index", str(repo), "--store", str(store), "--json", *emb], check=True, capture_output=True,
                   env=_env(), timeout=TIMEOUT_S)
    reader = DocStore.open(store, read_only=True)
    watcher = Watcher(repo, store, embedder)
    try:
        watcher.next()  # the catch-up batch: nothing changed since the index
        ours = saves_watched(repo, reader, n, saves, "o")
        watcher.drain(1.0)
        burst_s, batches, reports = burst_watched(repo, watcher, n)
    finally:
        watcher.stop()
    peer = saves_by_hand(repo, store, reader, n, saves, "p", embedder)
    peer_burst = burst_by_hand(repo, store, embedder)
    reader.close()
    extra = {"files": n, "saves": saves, "embedder": embedder or "bundled MiniLM", "ours_p90_s": percentile(ours, 90),
             "peer_p90_s": percentile(peer, 90), "ours_s": [round(x, 3) for x in ours], "peer_s": [round(x, 3) for x in peer]}
    r1 = record(NAME, "save -> searchable (median)", median(ours), median(peer), "s", peer_name=PEER, higher_is_better=False,
                goal="<= 2 s", extra=extra, quick=quick)
    gens = sum(1 for b in reports if (b.get("report") or {}).get("chunks_added") or (b.get("report") or {}).get("chunks_removed"))
    r2 = record(NAME, f"git checkout of {n} files -> searchable", burst_s, peer_burst, "s", peer_name=PEER,
                higher_is_better=False, goal="one batch", quick=quick,
                extra={"files": n, "batches": batches, "generations": gens, "embedder": extra["embedder"],
                       "batch_seconds": [b.get("seconds") for b in reports]})
    r3 = record(NAME, f"git checkout of {n} files: index batches", float(batches), 1.0, "batches", peer_name=PEER,
                higher_is_better=False, goal="1", quick=quick)
    for r in (r1, r2, r3):
        print(f"{r['target']}: ours {r['ours']:.3f} {r['unit']}, peer {r['peer']:.3f} ({r['goal']})")
    print(f"saves: ours median {median(ours):.3f} s p90 {percentile(ours, 90):.3f}; by hand median {median(peer):.3f} s")
    return 0 if median(ours) <= 2.0 and batches == 1 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 files, 5 saves, the hash-64 embedder")
    ap.add_argument("--files", type=int, default=None, help="files in the repository (default 1000; quick 200)")
    ap.add_argument("--saves", type=int, default=None, help="saves timed each way (default 20; quick 5)")
    ap.add_argument("--embedder", default=None, help="embedder spec (default: bundled MiniLM; quick: hash-64)")
    a = ap.parse_args(argv)
    n = a.files or (200 if a.quick else 1000)
    saves = a.saves or (5 if a.quick else 20)
    embedder = a.embedder or ("hash-64" if a.quick else None)
    return run(n, saves, embedder, a.quick)


if __name__ == "__main__":
    sys.exit(main())
