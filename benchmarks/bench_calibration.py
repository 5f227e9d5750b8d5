"""Calibrated kNN-LM on several domains: base LM vs calibrated (no flags) vs the oracle, per-token
lambda vs the best fixed lambda, and build tokens/s per stored token vs the plain forward pass.

Domains, built from what this machine has (documents disjoint between datastore and test text):
  wikitext  WikiText-2 train articles -> wiki.test.tokens          (encyclopaedic)
  science   SciFact + CACM abstracts, shuffled; the tail as test   (scientific)
  code      this Python's standard library, sorted; other modules  (code)
  tiny      ~8k tokens of WikiText-2 train -> wiki.test.tokens    (a tiny store)

For each: build with the defaults (5% held out, calibrated at the end), load with no flags, one
pass over the test text with 64 neighbours per token, and every setting re-scored from it:
  oracle    the best fixed (k, T, lambda) on the test text itself (the calibration grid)
  per-token the fitted per-token lambda at the calibrated (k, T) vs the best fixed lambda there
  defaults  the pre-calibration defaults k=64 lambda=0.25 T=2.55 (what a user got before)
With --windowed-too each domain is also built with --no-kv-cache (every window run whole), so the
two builds' speed and the perplexity their keys give compare in one run.

  nice python -m benchmarks calibration --store-tokens 40000 --test-tokens 4000
  python -m benchmarks calibration --quick     (the tiny domain only, 400 test tokens)
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._shared_knnlm import wiki_articles
from benchmarks.common import WORK, data_dir, record

PEER = "the base LM and the pre-calibration defaults (k=64, lambda=0.25, T=2.55), same test pass"


def out(msg: str) -> None:
    print(msg, flush=True)


def _take(tok, docs: list[str], n_tokens: int) -> tuple[list[str], list[str]]:
    """(the first documents holding ~n_tokens, the rest)."""
    used, i = 0, 0
    while i < len(docs) and used < n_tokens:
        used += len(tok(docs[i], add_special_tokens=False)["input_ids"])
        i += 1
    return docs[:i], docs[i:]


def _prefix(tok, text: str, n_tokens: int) -> str:
    ids = tok(text[: n_tokens * 8], add_special_tokens=False)["input_ids"][:n_tokens]
    return tok.decode(ids)


def domain(name: str, tok, store_tokens: int, test_tokens: int) -> tuple[list[str], str]:
    """(datastore documents, test text) of one domain."""
    if name in ("wikitext", "tiny"):
        docs, _ = _take(tok, wiki_articles(data_dir() / "wikitext-2" / "wiki.train.tokens"), store_tokens if name == "wikitext" else 8000)
        return docs, _prefix(tok, (data_dir() / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8"), test_tokens)
    if name == "science":
        recs = []
        for f in ("beir-scifact", "cacm-beir"):
            for line in (data_dir() / f / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                text = (r.get("title", "") + "\n" + r.get("text", "")).strip()
                if len(text) > 200:
                    recs.append(text)
        random.Random(0).shuffle(recs)
        docs, rest = _take(tok, recs, store_tokens)
        test, _ = _take(tok, rest, test_tokens)
        return docs, _prefix(tok, "\n\n".join(test), test_tokens)
    if name == "code":
        std = Path(logging.__file__).resolve().parents[1]
        files = sorted(p for p in std.glob("*.py") if p.stat().st_size > 2000)
        srcs = [p.read_text(encoding="utf-8", errors="replace")[:30_000] for p in files]
        rng = random.Random(1)
        order = list(range(len(srcs)))
        rng.shuffle(order)
        docs, rest = _take(tok, [srcs[i] for i in order], store_tokens)
        test, _ = _take(tok, rest, test_tokens)
        return docs, _prefix(tok, "\n\n".join(test), test_tokens)
    raise ValueError(name)


def plain_forward_tps(lm, text: str, n_windows: int = 2, window: int = 1024) -> float:
    """The kNN-LM benchmarks' yardstick (the unmodified model with lm_head on full windows), on this text."""
    from benchmarks._shared_knnlm import plain_forward_tps as forward_tps

    return forward_tps(lm, lm.tokenizer(text, add_special_tokens=False)["input_ids"], n_windows, window)


def score_test(lm, ds: Path, test: str) -> dict:
    """One pass over the test text (64 neighbours per token); every setting re-scored from it."""
    from dataclasses import replace

    from lm.datastore.calibration import CAL_KS, CAL_LAMBDAS, temperature_grid
    from lm.eval import TEMPERATURES
    from lm.knn import lambda_features, mix_nll, sweep_nll
    from lm.knnlm import KNNLM, KNNConfig, config_nll

    knn = KNNLM.load(lm, ds)  # no flags: the datastore's calibration
    cfg, cal = knn.config, knn.calibration
    K = min(64, knn.store.count)
    sc = knn.score_tokens(test, [replace(cfg, k=K, adaptive_threshold=None)])
    r = sc.retrievals[0]
    base = float(np.exp(-sc.base_lp.mean()))
    calibrated = float(np.exp(config_nll(sc, r, cfg).mean()))
    ks = sorted({min(k, K) for k in CAL_KS})
    Ts = sorted({*temperature_grid(r.D), *TEMPERATURES, cfg.temperature, 2.55})
    lams = sorted({*CAL_LAMBDAS, 0.25, cfg.lambda_})
    grid = sweep_nll(sc.base_lp, r.D, r.hit, ks, Ts, lams)[0] / sc.tokens  # (nk, nT, nL)
    a, b, c = np.unravel_index(np.argmin(grid), grid.shape)
    res = {"tokens": sc.tokens, "base_ppl": base, "calibrated_ppl": calibrated,
           "calibration": cal.to_json() if cal else None, "oracle_ppl": float(np.exp(grid[a, b, c])),
           "oracle": {"k": ks[a], "temperature": Ts[b], "lambda": lams[c]},
           "defaults_ppl": float(np.exp(mix_nll(sc.base_lp, r.D[:, :min(64, K)], r.hit[:, :min(64, K)], 2.55, 0.25).mean())),
           "base_tokens_per_s": sc.tokens / sc.base_seconds}
    res["oracle_gain_reached"] = (base - calibrated) / (base - res["oracle_ppl"]) if base > res["oracle_ppl"] else None
    if cal is not None:
        ki = ks.index(min(cal.k, K))
        ti = Ts.index(cal.temperature)
        li = int(np.argmin(grid[ki, ti]))
        res["best_fixed_lambda_at_calibrated_kT"] = {"lambda": lams[li], "ppl": float(np.exp(grid[ki, ti, li]))}
        if cal.fitted_fn is not None:
            f = lambda_features(r.D[:, :cal.k], r.values[:, :cal.k], sc.max_p, cal.temperature)
            lam = cal.fitted_fn(f)
            res["per_token_ppl"] = float(np.exp(mix_nll(sc.base_lp, r.D[:, :cal.k], r.hit[:, :cal.k], cal.temperature, lam).mean()))
            res["per_token_kept"] = cal.lambda_fn is not None
    res["old_config"] = KNNConfig().k
    return res


def run_domain(args, lm, name: str, root: Path, windowed: bool = False) -> dict:
    from lm.datastore.build import BuildConfig, build_datastore

    docs, test = domain(name, lm.tokenizer, args.store_tokens, args.test_tokens)
    d = root / name
    (d / "corpus").mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (d / "corpus" / f"doc{i:05d}.txt").write_text(text, encoding="utf-8")
    (d / "test.txt").write_text(test, encoding="utf-8")
    sample = "\n".join(docs)
    fwd1 = plain_forward_tps(lm, sample)
    tag = "-windowed" if windowed else ""
    ds = d / f"datastore{tag}"
    if not (ds / "manifest.json").exists() or args.rebuild:
        import shutil

        shutil.rmtree(ds, ignore_errors=True)
        rep = build_datastore(lm, [str(d / "corpus")], ds, BuildConfig(decontaminate=(str(d / "test.txt"),), kv_cache=False if windowed else None),
                             progress=False)
        fwd2 = plain_forward_tps(lm, sample)
        build = {"entries": rep.entries_total, "heldout_tokens": rep.heldout_tokens, "store_tokens_per_s": rep.store_tokens_per_s,
                 "plain_forward_tps": [fwd1, fwd2], "ratio": rep.store_tokens_per_s / statistics.mean([fwd1, fwd2]),
                 "build_seconds": rep.seconds, "forward_tokens": rep.forward_tokens, "cached_windows": rep.cached_windows}
        (d / f"build{tag}.json").write_text(json.dumps(build))
    build = json.loads((d / f"build{tag}.json").read_text())
    res = {"domain": name + (" (windowed build)" if windowed else ""), "documents": len(docs), "build": build, **score_test(lm, ds, test)}
    return res


def line(r: dict) -> str:
    cal = r["calibration"] or {}
    pt = f"{r['per_token_ppl']:.3f}{' (kept)' if r.get('per_token_kept') else ' (dropped)'}" if "per_token_ppl" in r else "-"
    bf = r.get("best_fixed_lambda_at_calibrated_kT", {})
    reach = f"{100 * r['oracle_gain_reached']:.0f}%" if r["oracle_gain_reached"] is not None else "n/a (oracle = base)"
    return (f"| {r['domain']} | {r['build']['entries']} | {cal.get('heldout_tokens', 0)} | {r['tokens']} | {r['base_ppl']:.3f} | "
            f"{r['calibrated_ppl']:.3f} (k={cal.get('k')}, T={cal.get('temperature', 0):.3g}, lambda={cal.get('lambda')}) | "
            f"{r['oracle_ppl']:.3f} (k={r['oracle']['k']}, T={r['oracle']['temperature']:.3g}, lambda={r['oracle']['lambda']}) | "
            f"{reach} | {r['defaults_ppl']:.3f} | {pt} | {bf.get('ppl', float('nan')):.3f} (lambda={bf.get('lambda')}) | "
            f"{r['build']['store_tokens_per_s']:.0f} / {statistics.mean(r['build']['plain_forward_tps']):.0f} = {r['build']['ratio']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", default="tiny,wikitext,science,code", help="comma-separated: wikitext, science, code, tiny")
    ap.add_argument("--store-tokens", type=int, default=40_000, help="datastore size per domain (tiny: 8k)")
    ap.add_argument("--test-tokens", type=int, default=4000, help="test text per domain")
    ap.add_argument("--root", default=None, help="work folder (default $KNNRAG_CACHE/bench-calibration)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild datastores that exist")
    ap.add_argument("--windowed-too", action="store_true",
                    help="also build each domain with --no-kv-cache (the strided windowed build) and score it, same run")
    ap.add_argument("--quick", action="store_true", help="the tiny domain only, 400 test tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.domains, args.test_tokens, args.root = "tiny", 400, args.root or str(WORK / "calibration-quick")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from lm.models import load_lm
    from retrieval.embed.embedder import cache_root

    root = Path(args.root) if args.root else cache_root() / "bench-calibration"
    root.mkdir(parents=True, exist_ok=True)
    lm = load_lm()
    results = []
    for name in args.domains.split(","):
        for windowed in (False, True) if args.windowed_too else (False,):
            t0 = time.perf_counter()
            r = run_domain(args, lm, name, root, windowed)
            results.append(r)
            (root / "results.json").write_text(json.dumps(results, indent=1))
            out(f"[{r['domain']}] {time.perf_counter() - t0:.0f} s: {json.dumps(r)}")
    out("| domain | entries | held out | test tokens | base ppl | calibrated ppl (no flags) | oracle ppl (best fixed on test) | "
        "oracle gain reached | old defaults ppl | per-token lambda ppl | best fixed lambda ppl at calibrated k,T | "
        "build stored tok/s / plain forward tok/s |")
    out("|" + "---|" * 12)
    for r in results:
        out(line(r))
        record("calibration", f"kNN-LM test perplexity, calibrated defaults, {r['domain']} (goal: never above the base LM)",
               r["calibrated_ppl"], r["base_ppl"], "perplexity", peer_name="base LM", higher_is_better=False,
               goal="<= 1.0x", extra={"entries": r["build"]["entries"], "tokens": r["tokens"],
                                      "oracle_gain_reached": r["oracle_gain_reached"], "old_defaults_ppl": r["defaults_ppl"]},
               quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
