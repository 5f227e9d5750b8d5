"""CLI: `knnrag datastore build|calibrate|info`, `knnrag eval`, `knnrag generate`, `knnrag explain`.

Cheap to import: torch / transformers / faiss load inside the handlers only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from lm.knnlm import KNNLM, KNNOverrides


def _knn_options(p: argparse.ArgumentParser, *, lam: bool = True) -> None:
    p.add_argument("--model", default=None, help="HF id or local path (default: the model that built the datastore, else SmolLM2)")
    p.add_argument("-k", type=int, default=None, help="neighbours per token (default: the datastore's calibrated k)")
    if lam:
        p.add_argument("--lambda", dest="lambda_", type=float, default=None,
                       help="kNN weight in [0, 1] (default: the datastore's calibrated lambda, 0 where kNN does not help)")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature on squared L2 distances (default: the calibrated one)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per search (default 32)")
    p.add_argument("--exact", action="store_true", help="exact (Flat) search instead of the trained index")
    p.add_argument("--no-rerank", action="store_true", help="skip the exact re-rank of approximate neighbours (faster, less accurate)")
    p.add_argument("--adaptive", type=float, default=None, metavar="TAU",
                   help="skip retrieval where the base LM's top probability >= TAU")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="search on Ray actors: `local` or a cluster's HOST:PORT (needs knnrag[ray])")
    p.add_argument("--shards", type=int, default=None, help="with --ray: datastore shards, one actor each (default 2); same results as one index")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _owner_options(p: argparse.ArgumentParser) -> None:
    """--store/--collection: a collection's own datastore (`index --knn`), without knowing its folder."""
    p.add_argument("--store", default=None, help="use the kNN-LM datastore of a collection of this store (instead of --datastore)")
    p.add_argument("--collection", default="default", help="with --store: the collection (default: default)")


def _datastore_arg(args, given: str | None) -> str | None:
    """The datastore folder from --datastore (or a positional DIR) or from --store/--collection; not both."""
    store = getattr(args, "store", None)
    if store is None:
        return given
    if given is not None:
        raise InvalidInputError("both a datastore folder and --store were given", "pass one: --datastore DIR, or --store S [--collection C]")
    from lm.knn_index import collection_datastore

    return str(collection_datastore(store, args.collection))


def _build_parser(dsub: argparse._SubParsersAction) -> None:
    b = dsub.add_parser("build", help="store (key, next token) pairs of a corpus; appends to an existing DIR, resumes an interrupted build")
    b.add_argument("corpus", nargs="+", help="text files or folders (.gitignore honoured, JSONL = one document per record)")
    b.add_argument("--out", required=True, help="datastore folder")
    b.add_argument("--model", default=None, help="HF causal LM id or local path (default: bundled SmolLM2-135M-Instruct)")
    b.add_argument("--key-layer", default=None, help="module path whose input is the key (default: last block's feed-forward)")
    b.add_argument("--max-tokens", type=int, default=None, help="store at most N entries")
    b.add_argument("--index", default="auto", help="FAISS index_factory string; auto = Flat below 100k entries, else IVF<~4 sqrt(N)>,PQ<dim/2>x4fs")
    b.add_argument("--ondisk", action="store_true", default=None,
                   help="keep the IVF index's lists in one mmap'ed .ivfdata file, so the index may exceed RAM: trained once on a "
                        "sample, added part by part (on the workers with --ray), merged; auto = IVF<~4 sqrt(N)>,PQ64 (8-bit codes: "
                        "fast-scan lists cannot live on disk). Chosen when the datastore is created")
    b.add_argument("--decontaminate", action="append", default=[], metavar="EVAL_FILE",
                   help="drop the datastore entries that follow an n-gram shared with this evaluation text; "
                        "one file per flag, repeat it for several (so it never swallows a corpus path)")
    b.add_argument("--decontaminate-scope", choices=["span", "window"], default="span",
                   help="span (default): drop entries inside a shared n-gram or within --decontaminate-margin tokens after it; "
                        "window: drop every window holding a shared n-gram (strict, discards far more)")
    b.add_argument("--decontaminate-margin", type=int, default=128, help="tokens dropped after a shared n-gram (scope span)")
    b.add_argument("--ngram", type=int, default=13, help="n-gram length for --decontaminate (default 13)")
    b.add_argument("--window", type=int, default=None, help="tokens per window (default min(max length, 1024))")
    b.add_argument("--stride", type=int, default=None, help="new tokens per window (default 3/4 window)")
    b.add_argument("--batch-size", type=int, default=2, help="windows per forward pass")
    b.add_argument("--holdout", type=float, default=0.05,
                   help="fraction of the corpus kept out of the datastore to calibrate on (document tails; default 0.05, 0 = none)")
    b.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the KV cache along documents longer than one window, so each token is forwarded once "
                        "instead of window/stride times (default: on, off with --ray); --no-kv-cache: the strided windowed build")
    b.add_argument("--no-calibrate", action="store_true", help="skip the calibration after the build (the old defaults apply)")
    b.add_argument("--ray", default=None, metavar="ADDRESS", help="run the forwards on Ray: `local` or a cluster's HOST:PORT (needs knnrag[ray])")
    b.add_argument("--workers", type=int, default=1, help="with --ray: LM actors (default 1)")
    b.add_argument("--cpus-per-worker", type=int, default=1, help="with --ray: CPUs (torch threads) per LM actor")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    b.add_argument("--json", action="store_true", help="one JSON report on stdout")
    b.set_defaults(func=cmd_build)


def register(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("datastore", help="kNN-LM token datastore: build (or append to) and inspect")
    dsub = ds.add_subparsers(dest="datastore_command", metavar="ACTION", required=True)
    _build_parser(dsub)
    c = dsub.add_parser("calibrate", help="re-choose k, temperature and lambda on the held-out slice, or on TEXT files you pass")
    c.add_argument("dir", help="datastore folder")
    c.add_argument("text", nargs="*", help="text files to calibrate on (default: the slice the build held out)")
    c.add_argument("--model", default=None, help="HF id or local path (default: the model that built the datastore)")
    c.add_argument("--no-per-token", action="store_true", help="fit only a fixed lambda (no per-token lambda function)")
    c.add_argument("--json", action="store_true", help="the calibration record as JSON on stdout")
    c.set_defaults(func=cmd_calibrate)
    i = dsub.add_parser("info", help="what a datastore holds: model, key layer, entries, index, calibration")
    i.add_argument("dir", nargs="?", default=None, help="datastore folder (or --store S [--collection C])")
    _owner_options(i)
    i.add_argument("--json", action="store_true", help="one JSON document on stdout")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("eval", help="strided perplexity of base LM vs kNN-LM (with --sweep: lambda/temperature/k grid + plot)")
    e.add_argument("text", nargs="+", help="text files to score ('-' = stdin)")
    e.add_argument("--datastore", default=None, help="datastore folder (without it and --store: base LM only)")
    _owner_options(e)
    e.add_argument("--stride", type=int, default=None, help="window stride (default window/2)")
    e.add_argument("--sweep", action="store_true", help="also sweep lambda, temperature and k")
    e.add_argument("--plot", default=None, metavar="PNG", help="write perplexity vs lambda (implies --sweep)")
    _knn_options(e)
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="generate with kNN-LM (streams tokens to stdout)")
    g.add_argument("prompt", help="text to continue")
    g.add_argument("--datastore", default=None, help="datastore folder (without it and --store: the plain LM)")
    _owner_options(g)
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --sample)")
    g.add_argument("--seed", type=int, default=None, help="random seed for --sample")
    g.add_argument("--allow-repeats", action="store_true",
                   help="keep generating when a sentence repeats an earlier one (default: stop there)")
    g.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template (default: if the tokenizer has one)")
    g.add_argument("--no-chat", dest="chat", action="store_false", help="continue the raw prompt, no chat template")
    _knn_options(g)
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("explain", help="top next tokens under base LM, kNN and the mix, with the neighbours' sources")
    x.add_argument("context", help="text whose next token is explained")
    x.add_argument("--datastore", default=None, help="datastore folder (or --store S [--collection C]: a collection's own)")
    _owner_options(x)
    x.add_argument("--top", type=int, default=10, help="tokens and neighbours to list (default 10)")
    _knn_options(x)
    x.set_defaults(func=cmd_explain)

    from lm.ask_cli import register as register_ask  # `ask` uses no MCP: it lives in lm

    register_ask(sub)

    from lm.datastore.verify import register as register_verify  # cheap: numpy-free until it runs
    from lm.knn_index import register as register_knn_index

    register_knn_index(sub)  # `index --knn` and `stats` with the kNN half (retrieval never imports lm)

    register_verify(dsub)


def _overrides(args: argparse.Namespace) -> KNNOverrides:
    """The flags the user passed; KNNLM.load applies them over the datastore's calibrated config."""
    from lm.knnlm import KNNConfig, KNNOverrides

    ov = KNNOverrides(k=getattr(args, "k", None), lambda_=getattr(args, "lambda_", None),
                      temperature=getattr(args, "temperature", None), nprobe=getattr(args, "nprobe", None),
                      adaptive_threshold=getattr(args, "adaptive", None), exact=True if getattr(args, "exact", False) else None,
                      rerank_exact=False if getattr(args, "no_rerank", False) else None)
    ov.apply(KNNConfig())  # validate before loading anything
    return ov


def _knnlm(args: argparse.Namespace) -> KNNLM:
    from lm.knnlm import KNNLM

    ov = _overrides(args)
    args.datastore = _datastore_arg(args, args.datastore)
    if args.datastore is not None and not Path(args.datastore).exists():
        raise NotFoundError(f"datastore {args.datastore} does not exist", "build one with `knnrag datastore build CORPUS --out DIR`")
    if getattr(args, "shards", None) is not None and not getattr(args, "ray", None):
        raise InvalidInputError("--shards needs --ray", "add --ray local (or a cluster address), or drop --shards")
    knn = KNNLM.load(args.model, args.datastore, overrides=ov)
    if getattr(args, "ray", None):
        from lm.datastore.shards import shard_knnlm

        shard_knnlm(knn, address=args.ray, shards=args.shards or 2)
    return knn


def cmd_build(args) -> int:
    from lm.datastore.build import BuildConfig, build_datastore
    from lm.models import load_lm
    from retrieval.cli.output import emit_json

    cfg = BuildConfig(window=args.window, stride=args.stride, batch_size=max(1, args.batch_size), max_tokens=args.max_tokens,
                      decontaminate=tuple(args.decontaminate), ngram=args.ngram, index_factory=args.index, index_ondisk=args.ondisk,
                      decontaminate_scope=args.decontaminate_scope, decontaminate_margin=args.decontaminate_margin,
                      holdout=args.holdout, calibrate=not args.no_calibrate, kv_cache=args.kv_cache)
    if args.ngram < 1:
        raise InvalidInputError("--ngram must be >= 1", "use 13 (the default)")
    spec = args.model
    if spec is None and (Path(args.out) / "manifest.json").is_file():
        from lm.datastore.token_store import TokenStore

        spec = TokenStore.open(args.out).manifest.get("lm_spec")
    lm = load_lm(spec, key_layer=args.key_layer)
    progress = not args.no_progress and not args.json
    if args.ray:
        from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray

        rc = RayBuildConfig(args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker)
        rep = build_datastore_ray(lm, args.corpus, args.out, cfg, rc, progress=progress, lm_spec=spec)
    else:
        rep = build_datastore(lm, args.corpus, args.out, cfg, progress=progress, lm_spec=spec)
    d = rep.to_dict()
    if args.json:
        emit_json(d)
    else:
        sys.stderr.write(
            f"stored {d['entries_added']} entries ({d['entries_total']} in total) from {d['documents']} documents in {d['seconds']} s "
            f"({d['store_tokens_per_s']} tokens/s); duplicates dropped: {d['exact_duplicates_dropped']} exact, "
            f"{d['near_duplicates_dropped']} near; decontamination dropped {d['entries_dropped_decontamination']} entries "
            f"({d['windows_dropped_decontamination']} whole windows, {d['windows_trimmed_decontamination']} trimmed); "
            f"index {d['index']['factory'] if d['index'] else None}\n")
        sys.stderr.write(_calibration_line(d["calibration"]) + "\n")
        for s in d["skipped"]:
            sys.stderr.write(f"skipped {s['source']}: {s['reason']}\n")
    return 0


def _calibration_line(raw: dict | None) -> str:
    from lm.datastore.calibration import Calibration

    if not raw:
        return "calibration: none (built before calibration; the old defaults apply; run `knnrag datastore calibrate DIR`)"
    if "skipped" in raw:
        return f"calibration: skipped ({raw['skipped']}); the old defaults apply"
    cal = Calibration.from_json(raw)
    return f"calibration: {cal.describe()}" + (f"\n{cal.message()}" if cal.message() else "")


def cmd_calibrate(args) -> int:
    from lm.datastore.calibrate import calibrate_store
    from lm.datastore.token_store import TokenStore
    from lm.models import load_lm
    from retrieval.cli.output import emit_json

    texts = _read_texts(args.text) if args.text else None
    store = TokenStore.open(args.dir)
    lm = load_lm(args.model if args.model is not None else store.manifest.get("lm_spec"))
    store = TokenStore.open(args.dir, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash, vocab_size=lm.vocab_size)
    cal = calibrate_store(lm, store, texts, fit_per_token=not args.no_per_token)
    raw = cal.to_json() if cal is not None else store.manifest.get("calibration")
    if args.json:
        emit_json(raw)
    else:
        sys.stdout.write(_calibration_line(raw) + "\n")
    return 0


def cmd_info(args) -> int:
    from lm.datastore.token_store import TokenStore
    from retrieval.cli.output import emit_json

    folder = _datastore_arg(args, args.dir)
    if folder is None:
        raise InvalidInputError("no datastore given", "pass its folder, or --store S [--collection C] for a collection's own")
    info = TokenStore.open(folder).info()
    if args.json:
        emit_json(info)
    else:
        for k, v in info.items():
            if k != "calibration":
                sys.stdout.write(f"{k:16s} {v}\n")
        sys.stdout.write(_calibration_line(info.get("calibration")) + "\n")
    return 0


def _read_texts(paths: list[str]) -> list[str]:
    texts = []
    for p in paths:
        if p == "-":
            texts.append(sys.stdin.read())
            continue
        f = Path(p)
        if not f.is_file():
            raise InvalidInputError(f"text file not found: {p}", "pass files to score ('-' reads stdin)")
        texts.append(f.read_text(encoding="utf-8", errors="replace"))
    return texts


def cmd_eval(args) -> int:
    from lm.eval import evaluate
    from retrieval.cli.output import emit_json

    texts = _read_texts(args.text)
    knn = _knnlm(args)
    res = evaluate(knn, texts, sweep=bool(args.sweep or args.plot), plot=args.plot, stride=args.stride)
    if args.json:
        emit_json(res)
        return 0
    w = sys.stdout.write
    w(f"tokens {res['tokens']}\nbase LM perplexity {res['base_ppl']:.3f}  ({res['base_tokens_per_s']} tokens/s)\n")
    if res["knn_ppl"] is not None:
        lam = "per-token" if res["per_token_lambda"] else res["lambda"]
        src = "calibrated" if res["calibration"] else "default/flags"
        w(f"kNN-LM perplexity  {res['knn_ppl']:.3f}  ({res['knn_tokens_per_s']} tokens/s)  "
          f"k={res['k']} lambda={lam} temperature={res['temperature']:.4g} ({src})\n")
    if "best" in res:
        b = res["best"]
        w(f"best of sweep      {b['ppl']:.3f}  k={b['k']} lambda={b['lambda']} temperature={b['temperature']}\n")
    if res.get("plot"):
        w(f"plot written to {res['plot']}\n")
    if res.get("note"):
        sys.stderr.write(f"note: {res['note']}\n")
    return 0


def _write_through(s: str) -> None:
    """Each generated piece reaches the terminal as it is made."""
    sys.stdout.write(s)
    sys.stdout.flush()


def cmd_generate(args) -> int:
    from retrieval.cli.output import emit_json

    knn = _knnlm(args)
    stream = None if args.json else _write_through
    text = knn.generate(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample, top_p=args.top_p,
                        chat=args.chat, on_token=stream, seed=args.seed, stop_on_repeat=not args.allow_repeats)
    if args.json:
        c = knn.config
        emit_json({"prompt": args.prompt, "text": text, "datastore": knn.has_datastore, "k": c.k, "lambda": c.lambda_,
                   "temperature": c.temperature, "per_token_lambda": c.lambda_fn is not None})
    else:
        sys.stdout.write("\n")
    return 0


def cmd_explain(args) -> int:
    from retrieval.cli.output import emit_json

    if args.datastore is None and getattr(args, "store", None) is None:
        raise InvalidInputError("explain needs a datastore", "pass --datastore DIR, or --store S [--collection C] for a collection's own")
    knn = _knnlm(args)
    res = knn.next_tokens(args.context, top=args.top)
    if knn.store is not None:
        from lm.datastore.live import locate

        locate(getattr(knn.store, "store", knn.store), res["neighbours"])  # chunk:<id> -> file:line
    if args.json:
        emit_json(res)
        return 0
    w = sys.stdout.write
    for name in ("base", "knn", "mix"):
        w(f"{name:5s} " + "  ".join(f"{t['token']!r} {t['prob']:.3f}" for t in res[name]) + "\n")
    for n in res["neighbours"][: args.top]:
        snip = n["snippet"].replace("\n", " ")
        w(f"  {n['token']!r:>12} d={n['distance']:.2f} {n['source']}: ...{snip[-90:]}\n")
    return 0
