"""Helpers the kNN-LM benchmarks share (bench_knnlm, bench_knnlm_1m): resumable state, the plain-forward yardstick.

Not a benchmark itself (no `bench_` prefix): `python -m benchmarks --list` does not name it.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import data_dir


def wikitext() -> Path:
    return data_dir("wikitext-2")


def out(msg: str) -> None:
    print(msg, flush=True)


def state_path(root: Path) -> Path:
    return root / "bench_state.json"


def load_state(root: Path) -> dict:
    p = state_path(root)
    return json.loads(p.read_text()) if p.is_file() else {}


def save_state(root: Path, st: dict) -> None:
    tmp = state_path(root).with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=1))
    os.replace(tmp, state_path(root))


def plain_forward_tps(lm, ids, n_windows: int = 3, window: int = 1024) -> float:
    """Tokens/s of the unmodified model (with lm_head) on full windows: the build's yardstick."""
    import torch

    rates = []
    for j in range(n_windows):
        x = torch.as_tensor(ids[j * window:(j + 1) * window])[None]  # (1, T)
        t0 = time.perf_counter()
        with torch.inference_mode():
            lm.model(input_ids=x, use_cache=False)
        rates.append(x.shape[1] / (time.perf_counter() - t0))
    return statistics.median(rates)


def first_tokens_text(tok, path: Path, n: int) -> str:
    """The prefix of a file holding about n tokens (cut at a line end)."""
    text = path.read_text(encoding="utf-8")
    lines, acc, used = text.splitlines(keepends=True), [], 0
    for line in lines:
        acc.append(line)
        used += len(tok(line, add_special_tokens=False)["input_ids"])
        if used >= n:
            break
    return "".join(acc)


def build_rate_from_shards(root: Path) -> dict:
    """Stored tokens/s of the last uninterrupted build run, from the commit times of its shards."""
    from lm.datastore.token_store import TokenStore

    st = TokenStore.open(root / "datastore")
    sh = sorted(((root / "datastore" / s["keys"]).stat().st_mtime, s["count"]) for s in st.manifest["shards"])
    run = [sh[-1]]
    for t, c in reversed(sh[:-1]):
        if run[0][0] - t > 900:  # a gap: an earlier run
            break
        run.insert(0, (t, c))
    if len(run) < 2:
        return {}
    secs = run[-1][0] - run[0][0]
    entries = sum(c for _t, c in run[1:])
    return {"entries": entries, "seconds": round(secs, 1), "store_tokens_per_s": round(entries / secs, 2)}


def wiki_articles(path: Path) -> list[str]:
    arts, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        s = line.strip()
        if s.startswith("= ") and s.endswith(" =") and not s.startswith("= ="):
            if cur:
                arts.append("".join(cur))
            cur = []
        cur.append(line)
    if cur:
        arts.append("".join(cur))
    return [a for a in arts if a.strip()]
