"""kNN-LM on WikiText-2 with the bundled SmolLM2-135M: base vs exact kNN-LM vs the fast configuration.

Stages (each resumable, results cached under $KNNRAG_CACHE/bench/):
  build  plain forward tokens/s, then a datastore from wiki.train.tokens (decontaminated against
         wiki.test and wiki.valid with 13-grams), with the fast FAISS index
  tune   one pass over wiki.valid.tokens: exact + fast neighbours, sweep k / T / lambda / adaptive tau
  test   one pass over wiki.test.tokens: base, exact (Flat) and fast kNN-LM perplexity and tokens/s
Every stage prints what it reached, so a run cut short still reports honest partial numbers.

  nice python -m benchmarks knnlm --max-tokens 1000000 --test-tokens 20000
  python -m benchmarks knnlm --quick          (a 5,000-entry store, a minute or two)
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks._shared_knnlm import (
    build_rate_from_shards,
    first_tokens_text,
    load_state,
    out,
    plain_forward_tps,
    save_state,
    wikitext,
)
from benchmarks.common import WORK, record

PEER = "the base LM (SmolLM2-135M) on the same WikiText-2 test tokens, same forward pass"
log = logging.getLogger("bench_knnlm")


def stage_build(args, lm, root: Path, st: dict) -> None:
    from lm.datastore.build import BuildConfig, build_datastore

    data = wikitext()
    train = data / "wiki.train.tokens"
    ids = lm.tokenizer(train.read_text(encoding="utf-8")[:200_000], add_special_tokens=False)["input_ids"]
    fwd = plain_forward_tps(lm, ids)
    out(f"[build] plain forward (model incl. lm_head, 1024-token windows): {fwd:.1f} tokens/s")
    st.setdefault("plain_forward_tps", []).append(fwd)
    save_state(root, st)
    deadline = None
    if args.build_until:
        hh, mm = map(int, args.build_until.split(":"))
        now = datetime.now(timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
    cfg = BuildConfig(max_tokens=args.max_tokens, decontaminate=(str(data / "wiki.test.tokens"), str(data / "wiki.valid.tokens")),
                      index_factory=args.fast_index, deadline=deadline)
    rep = build_datastore(lm, [str(train)], root / "datastore", cfg, progress=True)
    fwd2 = plain_forward_tps(lm, ids)
    runs = st.setdefault("build_runs", [])
    runs.append({"entries_added": rep.entries_added, "seconds": rep.seconds,
                 "loop_seconds": rep.loop_seconds, "store_tokens_per_s": rep.store_tokens_per_s,
                 "forward_tokens_per_s": rep.forward_tokens_per_s, "plain_forward_tps": [fwd, fwd2],
                 "forward_tokens": rep.forward_tokens, "forward_seconds": rep.forward_seconds,
                 "windows_trimmed": rep.windows_trimmed_decontamination,
                 "windows_dropped": rep.windows_dropped_decontamination, "entries_dropped": rep.entries_dropped_decontamination,
                 "stopped_at_deadline": rep.stopped_at_deadline, "index": rep.index})
    save_state(root, st)
    plain = statistics.mean([fwd, fwd2])
    out(f"[build] entries total {rep.entries_total} (this run {runs[-1]['entries_added']}), windows dropped by "
        f"decontamination {rep.windows_dropped_decontamination} ({rep.entries_dropped_decontamination} tokens), "
        f"build {rep.store_tokens_per_s:.1f} stored tokens/s ({rep.tokens_per_s:.1f} incl. loading + index), key-layer "
        f"forward {rep.forward_tokens_per_s:.1f} tokens/s, plain forward {plain:.1f} tokens/s -> build/forward "
        f"{rep.store_tokens_per_s / plain:.2f}x; index {rep.index}")
    if rep.stopped_at_deadline:
        out("[build] stopped at the deadline: the datastore is usable and the build resumes on the next run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["all", "build", "tune", "test", "eval"],
                    help="eval = tune + test on the datastore built so far")
    ap.add_argument("--max-tokens", type=int, default=1_000_000)
    ap.add_argument("--build-until", default=None, help="UTC HH:MM: stop building then (resumable), evaluate what exists")
    ap.add_argument("--fast-index", default="IVF2048,PQ288x4fs")
    ap.add_argument("--valid-tokens", type=int, default=4000)
    ap.add_argument("--test-tokens", type=int, default=20000)
    ap.add_argument("--stride", type=int, default=768, help="evaluation stride (window 1024)")
    ap.add_argument("--fast-variant", default=None, help="test stage: override the fast variant chosen on valid (e.g. ivf_np32)")
    ap.add_argument("--tau", type=float, default=None, help="test stage: override the adaptive threshold (0 = off)")
    ap.add_argument("--root", default=None, help="cache folder (default $KNNRAG_CACHE/bench)")
    ap.add_argument("--quick", action="store_true",
                    help="a 5,000-entry store, 500 valid / 500 test tokens, IVF16 (minutes; recorded as quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_tokens, args.valid_tokens, args.test_tokens, args.fast_index = 5000, 500, 500, "IVF16,Flat"
        args.root = args.root or str(WORK / "knnlm-quick")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from lm.models import cache_root, load_lm

    root = Path(args.root) if args.root else cache_root() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    st = load_state(root)
    st["root"] = str(root)
    t0 = time.perf_counter()
    lm = load_lm()
    out(f"[load] {lm.model_id} key layer {lm.key_layer} in {time.perf_counter() - t0:.1f} s")
    if args.stage in ("all", "build"):
        stage_build(args, lm, root, st)
    if args.stage in ("all", "tune", "eval"):
        stage_tune(args, lm, root, st)
    if args.stage in ("all", "test", "eval"):
        stage_test(args, lm, root, st)
    return 0



def open_knnlm(lm, root: Path, fast_index: str):
    from lm.datastore.token_store import TokenStore
    from lm.knnlm import KNNLM

    store = TokenStore.open(root / "datastore", lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash)
    idx = store.manifest.get("index") or {}
    if idx.get("factory") != fast_index or idx.get("ntotal") != store.count:  # e.g. a build stopped early
        t0 = time.perf_counter()
        idx = store.build_index(fast_index)
        out(f"[store] built {fast_index} over {store.count} entries in {time.perf_counter() - t0:.0f} s")
    out(f"[store] {store.count} entries, index {idx}")
    return KNNLM(lm, store)


def fast_configs(k: int, nprobes=(8, 32)) -> dict:
    from lm.knnlm import KNNConfig

    cfgs = {}
    for npb in nprobes:
        cfgs[f"ivf_np{npb}"] = KNNConfig(k=k, nprobe=npb, rerank_exact=False)
    for npb in nprobes:
        cfgs[f"ivf_np{npb}_rerank2"] = KNNConfig(k=k, nprobe=npb, rerank_exact=True, rerank_factor=2)
    return cfgs


def stage_tune(args, lm, root: Path, st: dict) -> None:
    """Choose k, T, lambda on wiki.valid with exact search; then the fast variant and adaptive tau."""
    from lm.eval import KS, LAMBDAS, TEMPERATURES, best_of, sweep_grid
    from lm.knnlm import KNNConfig, Retrieval, mix_nll

    knn = open_knnlm(lm, root, args.fast_index)
    text = first_tokens_text(lm.tokenizer, wikitext() / "wiki.valid.tokens", args.valid_tokens)
    kmax = max(KS)
    fast = fast_configs(kmax)
    names = ["exact", *fast]
    cfgs = [KNNConfig(k=kmax, exact=True), *fast.values()]
    sc = knn.score_tokens(text, cfgs, stride=args.stride)
    base_ppl = float(math.exp(-sc.base_lp.mean()))
    out(f"[tune] valid {sc.tokens} tokens: base ppl {base_ppl:.3f}, forward {sc.tokens / sc.base_seconds:.1f} tokens/s")
    grid = sweep_grid(sc.base_lp, sc.retrievals[0], ks=KS, temperatures=TEMPERATURES, lambdas=LAMBDAS[1:])
    best = best_of(grid)
    # refine the temperature around the best one
    T0 = best["temperature"]
    grid += sweep_grid(sc.base_lp, sc.retrievals[0], ks=[best["k"]], temperatures=[T0 * f for f in (0.5, 0.7, 0.85, 1.2, 1.5, 2.0)],
                       lambdas=[round(x, 3) for x in np.linspace(0.05, 0.6, 23)])
    best = best_of(grid)
    out(f"[tune] exact best: k={best['k']} T={best['temperature']:g} lambda={best['lambda']:g} ppl {best['ppl']:.3f}")
    from lm.eval import plot_sweep

    plot = plot_sweep([g for g in grid if g["temperature"] in TEMPERATURES or g["k"] == best["k"]], base_ppl,
                      root / "valid_sweep.png", "WikiText-2 valid")
    k, T, lam = best["k"], best["temperature"], best["lambda"]
    exact_gain = base_ppl - best["ppl"]
    variants = {}
    for name, r in zip(names[1:], sc.retrievals[1:]):
        ppl = float(np.exp(mix_nll(sc.base_lp, r, k, T, lam).mean()))
        variants[name] = {"ppl": ppl, "keep": (base_ppl - ppl) / exact_gain, "search_s_per_token": r.seconds / sc.tokens}
        out(f"[tune] {name}: ppl {ppl:.3f}, keeps {variants[name]['keep']:.1%} of the exact gain, "
            f"search {1e3 * r.seconds / sc.tokens:.3f} ms/token (k={kmax})")
    # the cheapest variant keeping >= 97% on valid: the 95% target plus a margin for test
    ok = [n for n, v in variants.items() if v["keep"] >= 0.97] or [max(variants, key=lambda n: variants[n]["keep"])]
    pick = min(ok, key=lambda n: variants[n]["search_s_per_token"])
    r = sc.retrievals[names.index(pick)]
    taus = {}
    for tau in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        skip = sc.max_p >= tau  # (n,) confident positions: no search
        Dm = r.D.copy()
        Dm[skip] = np.inf
        ppl = float(np.exp(mix_nll(sc.base_lp, Retrieval(Dm, r.hit, r.values, 0.0, 0), k, T, lam).mean()))
        taus[tau] = {"ppl": ppl, "keep": (base_ppl - ppl) / exact_gain, "skipped": float(skip.mean())}
        out(f"[tune] adaptive tau={tau}: skips {skip.mean():.1%} of searches, keeps {taus[tau]['keep']:.1%} of the exact gain")
    good = [t for t, v in taus.items() if v["keep"] >= 0.99 * variants[pick]["keep"]]
    tau = min(good) if good else None
    st["tune"] = {"valid_tokens": sc.tokens, "base_ppl": base_ppl, "best": best, "fast_variant": pick,
                  "variants": variants, "adaptive": {str(t): v for t, v in taus.items()}, "tau": tau, "plot": str(plot)}
    save_state(root, st)
    out(f"[tune] chosen: k={k} T={T:g} lambda={lam:g}; fast = {pick} + adaptive tau={tau}; plot {plot}")


def stage_test(args, lm, root: Path, st: dict) -> None:
    from dataclasses import replace

    from lm.knnlm import KNNConfig, mix_nll

    if "tune" not in st:
        out("[test] no tuned settings yet: run --stage tune first")
        return
    tn = st["tune"]
    k, T, lam = tn["best"]["k"], tn["best"]["temperature"], tn["best"]["lambda"]
    knn = open_knnlm(lm, root, args.fast_index)
    variant = args.fast_variant or tn["fast_variant"]
    tau = tn["tau"] if args.tau is None else (None if args.tau <= 0 else args.tau)
    fast = replace(fast_configs(k)[variant], temperature=T, lambda_=lam, adaptive_threshold=tau)
    exact = KNNConfig(k=k, temperature=T, lambda_=lam, exact=True)
    fast_noad = replace(fast, adaptive_threshold=None)
    from lm.knnlm import calibrated_config, config_nll

    cal, cal_cfg = calibrated_config(knn.store)  # what `knnrag eval --datastore` uses with no flags
    text = first_tokens_text(lm.tokenizer, wikitext() / "wiki.test.tokens", args.test_tokens)
    cfgs = [exact, fast, fast_noad] + ([replace(cal_cfg, exact=True)] if cal is not None else [])
    sc = knn.score_tokens(text, cfgs, stride=args.stride)
    n = sc.tokens
    base_ppl = float(math.exp(-sc.base_lp.mean()))
    res = {"tokens": n, "datastore_entries": knn.store.count, "k": k, "temperature": T, "lambda": lam,
           "base_ppl": base_ppl, "base_tps": n / sc.base_seconds}
    for name, r in zip(["exact", "fast", "fast_no_adaptive"], sc.retrievals):
        ppl = float(np.exp(mix_nll(sc.base_lp, r, k, T, lam).mean()))
        res[name] = {"ppl": ppl, "tps": n / (sc.base_seconds + r.seconds), "search_seconds": r.seconds,
                     "searched": r.searched, "reduction": 1 - ppl / base_ppl}
    if cal is not None:
        ppl = float(np.exp(config_nll(sc, sc.retrievals[3], cfgs[3]).mean()))
        res["calibrated"] = {"ppl": ppl, "reduction": 1 - ppl / base_ppl, "calibration": cal.to_json()}
        out(f"[test] calibrated (no flags, exact search) ppl {ppl:.3f} (-{1 - ppl / base_ppl:.1%}): {cal.describe()}")
    gain = base_ppl - res["exact"]["ppl"]
    for name in ("fast", "fast_no_adaptive"):
        res[name]["keep"] = (base_ppl - res[name]["ppl"]) / gain if gain > 0 else float("nan")
        res[name]["ratio"] = res[name]["tps"] / res["base_tps"]
    res["exact"]["ratio"] = res["exact"]["tps"] / res["base_tps"]
    st["test"] = res
    save_state(root, st)
    fast_desc = (f"{variant} (index {knn.store.manifest['index']['factory']}), adaptive tau={tau}"
                 + (" (overridden on the command line)" if args.fast_variant or args.tau is not None else " (chosen on valid)"))
    out(f"[test] {n} tokens of wiki.test, datastore {knn.store.count} entries, k={k} T={T:g} lambda={lam:g}")
    out(f"[test] base LM        ppl {base_ppl:8.3f}   {res['base_tps']:7.1f} tokens/s")
    for name in ("exact", "fast", "fast_no_adaptive"):
        v = res[name]
        extra = f", keeps {v['keep']:.1%} of the exact gain" if "keep" in v else ""
        out(f"[test] {name:15s} ppl {v['ppl']:8.3f}   {v['tps']:7.1f} tokens/s ({v['ratio']:.3f}x base), "
            f"-{v['reduction']:.1%} ppl, {v['searched']} searches{extra}")
    report(args, st, fast_desc)


def report(args, st: dict, fast_desc: str) -> None:
    res, tn = st["test"], st["tune"]
    runs = st.get("build_runs", [])
    entries = sum(r["entries_added"] for r in runs)
    loop_s = sum(r["loop_seconds"] for r in runs)
    plain_all = [x for r in runs for x in r["plain_forward_tps"]] or st.get("plain_forward_tps", [])
    plain = statistics.mean(plain_all) if plain_all else float("nan")
    build_tps = entries / loop_s if loop_s else float("nan")
    how = "build report"
    if not runs:  # the build was stopped from outside: measure it from its shards' commit times
        rate = build_rate_from_shards(Path(st["root"]))
        build_tps, how = rate.get("store_tokens_per_s", float("nan")), f"shard commit times ({rate})"
    from lm.datastore.token_store import TokenStore

    bstate = TokenStore.open(Path(st["root"]) / "datastore").manifest.get("build") or {}
    dropped = bstate.get("windows_dropped", runs[-1]["windows_dropped"] if runs else 0)
    dropped_entries = bstate.get("entries_dropped", runs[-1].get("entries_dropped", 0) if runs else 0)
    trimmed = bstate.get("windows_trimmed", 0)
    fwd_tok = sum(r.get("forward_tokens", 0) for r in runs)
    fwd_s = sum(r.get("forward_seconds", 0) for r in runs)
    fwd_tps = fwd_tok / fwd_s if fwd_s else (statistics.mean([r["forward_tokens_per_s"] for r in runs]) if runs else float("nan"))
    lines = [
        f"\n## kNN-LM on WikiText-2, SmolLM2-135M-Instruct ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `python -m benchmarks knnlm --max-tokens {args.max_tokens} --fast-index {args.fast_index} --valid-tokens {args.valid_tokens} "
        f"--test-tokens {args.test_tokens}{' --build-until ' + args.build_until if args.build_until else ''}"
        f"{' --stage ' + args.stage if args.stage != 'all' else ''}{' --fast-variant ' + args.fast_variant if args.fast_variant else ''}"
        f"{' --tau ' + str(args.tau) if args.tau is not None else ''}` "
        "(2 shared CPU cores, fp32; stages cached and resumable)\n",
        f"- Datastore: {res['datastore_entries']} entries from wiki.train.tokens (target {args.max_tokens}), 13-gram "
        f"decontaminated against wiki.test + wiki.valid, scope span, margin 128: {dropped_entries} entries dropped "
        f"({trimmed} windows trimmed, {dropped} dropped whole)",
        f"- Tuned on {tn['valid_tokens']} wiki.valid tokens only: k={res['k']}, T={res['temperature']:g}, lambda={res['lambda']:g}; "
        f"fast = {fast_desc}",
        f"- Test: {res['tokens']} tokens of wiki.test.tokens, window 1024, stride {args.stride}\n",
        "| mode | perplexity | vs base | tokens/s | x base tokens/s | share of exact gain |",
        "|---|---|---|---|---|---|",
        f"| base LM | {res['base_ppl']:.3f} | - | {res['base_tps']:.1f} | 1.000 | - |",
        f"| kNN-LM exact (Flat) | {res['exact']['ppl']:.3f} | -{res['exact']['reduction']:.1%} | {res['exact']['tps']:.1f} | {res['exact']['ratio']:.3f} | 100% |",
        f"| kNN-LM fast + adaptive (tau on valid) | {res['fast']['ppl']:.3f} | -{res['fast']['reduction']:.1%} | {res['fast']['tps']:.1f} | {res['fast']['ratio']:.3f} | {res['fast']['keep']:.1%} |",
        f"| **kNN-LM fast** (no adaptive) | {res['fast_no_adaptive']['ppl']:.3f} | -{res['fast_no_adaptive']['reduction']:.1%} | {res['fast_no_adaptive']['tps']:.1f} | {res['fast_no_adaptive']['ratio']:.3f} | {res['fast_no_adaptive']['keep']:.1%} |",
        "",
        f"- Build: {build_tps:.1f} stored tokens/s (from {how}) vs plain forward {plain:.1f} tokens/s (model with lm_head, "
        f"1024-token windows, measured at build start) -> {build_tps / plain:.2f}x; the test pass forward ran at "
        f"{res['base_tps']:.1f} tokens/s",
        f"- Build forward (windows of 1024 with stride 768, stopped at the key layer, hooks on): {fwd_tps:.1f} forward tokens/s "
        f"-> {fwd_tps / plain:.2f}x plain forward. Stored tokens/s is lower by the window overlap (each stored token costs "
        f"4/3 forward tokens, for >= 256 tokens of context) and by the decontamination drops.",
        "- Base and kNN-LM tokens/s come from one forward pass per window; each kNN mode adds its own timed search + mix "
        "(one batched FAISS search per window). Peers: faiss-cpu kNN-LM ~0.05x base (efficient-knnlm README), best GPU 0.81x.",
    ]
    out("\n".join(lines))
    extra = {"entries": res["datastore_entries"], "test_tokens": res["tokens"], "k": res["k"],
             "temperature": res["temperature"], "lambda": res["lambda"], "fast": fast_desc}
    record("knnlm", "WikiText-2 test perplexity, exact kNN-LM (goal: >= 8% below the base LM)", res["exact"]["ppl"],
           res["base_ppl"], "perplexity", peer_name="base LM", higher_is_better=False, goal="<= 0.92x", extra=extra,
           quick=args.quick)
    record("knnlm", "kNN-LM fast (IVF-PQ + re-rank) tokens/s (goal: >= 0.9x the base LM)",
           res["fast_no_adaptive"]["tps"], res["base_tps"], "tokens/s", peer_name="base LM", goal=">= 0.9x",
           extra={**extra, "share_of_exact_gain": res["fast_no_adaptive"]["keep"]}, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
