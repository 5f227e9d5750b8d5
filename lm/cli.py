"""CLI: `knnrag datastore build|info`, `knnrag eval`, `knnrag generate`, `knnrag explain`.

Cheap to import: torch / transformers / faiss load inside the handlers only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.errors import InvalidInputError, NotFoundError


def _knn_options(p: argparse.ArgumentParser, *, lam: bool = True) -> None:
    p.add_argument("--model", default=None, help="HF id or local path (default: the model that built the datastore, else SmolLM2)")
    p.add_argument("-k", type=int, default=None, help="neighbours per token (default 64)")
    if lam:
        p.add_argument("--lambda", dest="lambda_", type=float, default=None, help="kNN weight in [0, 1]")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature on squared L2 distances")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per search (default 32)")
    p.add_argument("--exact", action="store_true", help="exact (Flat) search instead of the trained index")
    p.add_argument("--no-rerank", action="store_true", help="skip the exact re-rank of approximate neighbours (faster, less accurate)")
    p.add_argument("--adaptive", type=float, default=None, metavar="TAU",
                   help="skip retrieval where the base LM's top probability >= TAU")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("datastore", help="kNN-LM token datastore: build (or append to) and inspect")
    dsub = ds.add_subparsers(dest="datastore_command", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="store (key, next token) pairs of a corpus; appends to an existing DIR, resumes an interrupted build")
    b.add_argument("corpus", nargs="+", help="text files or folders (.gitignore honoured, JSONL = one document per record)")
    b.add_argument("--out", required=True, help="datastore folder")
    b.add_argument("--model", default=None, help="HF causal LM id or local path (default: bundled SmolLM2-135M-Instruct)")
    b.add_argument("--key-layer", default=None, help="module path whose input is the key (default: last block's feed-forward)")
    b.add_argument("--max-tokens", type=int, default=None, help="store at most N entries")
    b.add_argument("--index", default="auto", help="FAISS index_factory string; auto = Flat below 100k entries, else IVF<~4 sqrt(N)>,PQ<dim/2>x4fs")
    b.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL_FILE",
                   help="drop the datastore entries that follow an n-gram shared with these evaluation texts")
    b.add_argument("--decontaminate-scope", choices=["span", "window"], default="span",
                   help="span (default): drop entries inside a shared n-gram or within --decontaminate-margin tokens after it; "
                        "window: drop every window holding a shared n-gram (strict, discards far more)")
    b.add_argument("--decontaminate-margin", type=int, default=128, help="tokens dropped after a shared n-gram (scope span)")
    b.add_argument("--ngram", type=int, default=13, help="n-gram length for --decontaminate (default 13)")
    b.add_argument("--window", type=int, default=None, help="tokens per window (default min(max length, 1024))")
    b.add_argument("--stride", type=int, default=None, help="new tokens per window (default 3/4 window)")
    b.add_argument("--batch-size", type=int, default=2, help="windows per forward pass")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    b.add_argument("--json", action="store_true", help="one JSON report on stdout")
    b.set_defaults(func=cmd_build)
    i = dsub.add_parser("info", help="what a datastore holds: model, key layer, entries, index")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("eval", help="strided perplexity of base LM vs kNN-LM (with --sweep: lambda/temperature/k grid + plot)")
    e.add_argument("text", nargs="+", help="text files to score ('-' = stdin)")
    e.add_argument("--datastore", default=None, help="datastore folder (without it: base LM only)")
    e.add_argument("--stride", type=int, default=None, help="window stride (default window/2)")
    e.add_argument("--sweep", action="store_true", help="also sweep lambda, temperature and k")
    e.add_argument("--plot", default=None, metavar="PNG", help="write perplexity vs lambda (implies --sweep)")
    _knn_options(e)
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="generate with kNN-LM (streams tokens to stdout)")
    g.add_argument("prompt")
    g.add_argument("--datastore", default=None, help="datastore folder (without it: the plain LM)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --sample)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template (default: if the tokenizer has one)")
    g.add_argument("--no-chat", dest="chat", action="store_false")
    _knn_options(g)
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("explain", help="top next tokens under base LM, kNN and the mix, with the neighbours' sources")
    x.add_argument("context")
    x.add_argument("--datastore", required=True)
    x.add_argument("--top", type=int, default=10)
    _knn_options(x)
    x.set_defaults(func=cmd_explain)

    from lm.knn_index import register as register_knn_index

    register_knn_index(sub)  # `index --knn` and `stats` with the kNN half (retrieval never imports lm)


def _config(args):
    from lm.knnlm import KNNConfig

    kw = {}
    for name, attr in (("k", "k"), ("lambda_", "lambda_"), ("temperature", "temperature"), ("nprobe", "nprobe"),
                       ("adaptive_threshold", "adaptive")):
        v = getattr(args, attr, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "exact", False):
        kw["exact"] = True
    if getattr(args, "no_rerank", False):
        kw["rerank_exact"] = False
    return KNNConfig(**kw)


def _knnlm(args):
    from lm.knnlm import KNNLM

    cfg = _config(args)  # validate before loading anything
    if args.datastore is not None and not Path(args.datastore).exists():
        raise NotFoundError(f"datastore {args.datastore} does not exist", "build one with `knnrag datastore build CORPUS --out DIR`")
    return KNNLM.load(args.model, args.datastore, cfg)


def cmd_build(args) -> int:
    from lm.datastore.build import BuildConfig, build_datastore
    from lm.models import load_lm
    from retrieval.cli.output import emit_json

    cfg = BuildConfig(window=args.window, stride=args.stride, batch_size=max(1, args.batch_size), max_tokens=args.max_tokens,
                      decontaminate=tuple(args.decontaminate), ngram=args.ngram, index_factory=args.index,
                      decontaminate_scope=args.decontaminate_scope, decontaminate_margin=args.decontaminate_margin)
    if args.ngram < 1:
        raise InvalidInputError("--ngram must be >= 1", "use 13 (the default)")
    spec = args.model
    if spec is None and (Path(args.out) / "manifest.json").is_file():
        from lm.datastore.token_store import TokenStore

        spec = TokenStore.open(args.out).manifest.get("lm_spec")
    lm = load_lm(spec, key_layer=args.key_layer)
    rep = build_datastore(lm, args.corpus, args.out, cfg, progress=not args.no_progress and not args.json, lm_spec=spec)
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
        for s in d["skipped"]:
            sys.stderr.write(f"skipped {s['source']}: {s['reason']}\n")
    return 0


def cmd_info(args) -> int:
    from lm.datastore.token_store import TokenStore
    from retrieval.cli.output import emit_json

    info = TokenStore.open(args.dir).info()
    if args.json:
        emit_json(info)
    else:
        for k, v in info.items():
            sys.stdout.write(f"{k:16s} {v}\n")
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
        w(f"kNN-LM perplexity  {res['knn_ppl']:.3f}  ({res['knn_tokens_per_s']} tokens/s)  "
          f"k={res['k']} lambda={res['lambda']} temperature={res['temperature']}\n")
    if "best" in res:
        b = res["best"]
        w(f"best of sweep      {b['ppl']:.3f}  k={b['k']} lambda={b['lambda']} temperature={b['temperature']}\n")
    if res.get("plot"):
        w(f"plot written to {res['plot']}\n")
    return 0


def cmd_generate(args) -> int:
    from retrieval.cli.output import emit_json

    knn = _knnlm(args)
    stream = None if args.json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    text = knn.generate(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample, top_p=args.top_p,
                        chat=args.chat, on_token=stream, seed=args.seed)
    if args.json:
        c = knn.config
        emit_json({"prompt": args.prompt, "text": text, "datastore": knn.has_datastore, "k": c.k, "lambda": c.lambda_,
                   "temperature": c.temperature})
    else:
        sys.stdout.write("\n")
    return 0


def cmd_explain(args) -> int:
    from retrieval.cli.output import emit_json

    knn = _knnlm(args)
    res = knn.next_tokens(args.context, top=args.top)
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
