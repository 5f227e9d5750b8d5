"""Datastore build speed per stored token vs the plain forward pass, windowed vs KV-cache build.

Interleaved in one run (the machine is shared: each round runs all three back to back, and the
medians of the per-round ratios are reported):
  plain     the unmodified model (with lm_head) on 1024-token windows: tokens/s
  windowed  build_datastore --no-kv-cache, window 1024 / stride 768 (each stored token costs 4/3 forward tokens)
  kv-cache  build_datastore's default (each token forwarded once, the previous 256 tokens cached)
Then how close the two builds' keys are, and kNN-LM perplexity on held-apart text with each store
(same k, T, lambda) so a difference in keys shows up as what it costs.

  nice python -m benchmarks build_speed --tokens 4096 --rounds 3
  python -m benchmarks build_speed --quick     (1,024 tokens, 1 round, 200 test tokens)

One document of --tokens tokens: the corpus is one long document, where the two builds differ.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import data_dir, record

PEER = "the plain forward pass (model with lm_head, 1024-token windows) over the same tokens, interleaved"


def plain_tps(lm, ids: list[int], window: int = 1024) -> float:
    import torch

    t0 = time.perf_counter()
    n = 0
    for a in range(0, len(ids) - 1, window):
        x = torch.as_tensor(ids[a:a + window])[None]  # (1, T)
        with torch.inference_mode():
            lm.model(input_ids=x, use_cache=False)
        n += x.shape[1]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="corpus tokens per build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--test-tokens", type=int, default=1000, help="perplexity text (0 = skip)")
    ap.add_argument("--quick", action="store_true", help="1,024 tokens, 1 round, 200 test tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds, args.test_tokens = 1024, 1, 200
    data = data_dir()
    from lm.datastore.build import BuildConfig, build_datastore
    from lm.knnlm import KNNLM, KNNConfig
    from lm.models import load_lm

    lm = load_lm()
    tok = lm.tokenizer
    train = (data / "wikitext-2" / "wiki.train.tokens").read_text(encoding="utf-8")
    ids = tok(train[: args.tokens * 6], add_special_tokens=False)["input_ids"][: args.tokens]
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    (work / "corpus.txt").write_text(tok.decode(ids), encoding="utf-8")
    cfg = BuildConfig(holdout=0.0, calibrate=False)
    rounds = []
    for r in range(args.rounds):
        row = {"plain": plain_tps(lm, ids)}
        for name, kv in (("windowed", False), ("kv_cache", True)):
            out = work / f"{name}-{r}"
            rep = build_datastore(lm, [str(work / "corpus.txt")], out, BuildConfig(**{**cfg.__dict__, "kv_cache": kv}), progress=False)
            row[name] = rep.store_tokens_per_s
            row[f"{name}_forward_tokens"] = rep.forward_tokens
            if r < args.rounds - 1:
                shutil.rmtree(out)
        rounds.append(row)
        print(json.dumps(row), flush=True)
    from lm.datastore.token_store import TokenStore

    a, b = TokenStore.open(work / f"windowed-{args.rounds - 1}"), TokenStore.open(work / f"kv_cache-{args.rounds - 1}")
    ka, kb = a.keys(np.arange(a.count)).astype(np.float32), b.keys(np.arange(b.count)).astype(np.float32)
    cos = (ka * kb).sum(1) / np.linalg.norm(ka, axis=1) / np.linalg.norm(kb, axis=1)
    res = {"entries": a.count, "rounds": rounds,
           "windowed_vs_plain": statistics.median(x["windowed"] / x["plain"] for x in rounds),
           "kv_cache_vs_plain": statistics.median(x["kv_cache"] / x["plain"] for x in rounds),
           "key_cosine": {"median": float(np.median(cos)), "p1": float(np.percentile(cos, 1)), "min": float(cos.min())},
           "keys_identical_fraction": float(np.mean(np.all(ka == kb, axis=1)))}
    if args.test_tokens:
        test = tok.decode(tok((data / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")[: args.test_tokens * 6],
                              add_special_tokens=False)["input_ids"][: args.test_tokens])
        cfg_k = KNNConfig(k=32, lambda_=0.25, temperature=2.55, exact=True)
        for name, store in (("windowed", a), ("kv_cache", b)):
            p = KNNLM(lm, store, cfg_k).perplexity(test)
            res[f"{name}_ppl"] = {"base": p.base_ppl, "knn": p.knn_ppl}
    print(json.dumps(res, indent=1))
    print(f"build stored tokens/s vs plain forward (median of {args.rounds} interleaved rounds): windowed "
          f"{res['windowed_vs_plain']:.2f}x, kv-cache {res['kv_cache_vs_plain']:.2f}x; key cosine median "
          f"{res['key_cosine']['median']:.4f} (1st percentile {res['key_cosine']['p1']:.4f})")
    shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(x["plain"] for x in rounds)
    record("build_speed", "datastore build, stored tokens/s, KV-cache build (goal: >= 0.9x the plain forward)",
           statistics.median(x["kv_cache"] for x in rounds), plain, "tokens/s", peer_name="plain forward",
           goal=">= 0.9x", extra={"tokens": args.tokens, "rounds": args.rounds,
                                  "windowed_vs_plain": res["windowed_vs_plain"], "key_cosine": res["key_cosine"]},
           quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
