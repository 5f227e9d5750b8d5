"""`knnrag ask`: the answer to a question from a store, with exact citations, in the terminal.

It uses no MCP (the MCP `ask` tool calls the same lm.rag.answer); the LM is loaded only when an
answer is generated, never for an extractive answer or an abstention.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from retrieval.errors import InvalidInputError

log = logging.getLogger("knnrag.ask")


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("ask", help="answer a question from the store with citations (streams to the terminal)",
                       description="The answer is the shortest passage of your files that holds it (a sentence, a few "
                                   "sentences, a list item or a table row), copied exactly with its file, lines and "
                                   "characters; a short phrase inside it is marked **like this** when the reader is "
                                   "confident. When the sources do not hold an answer it says so (grounded: false).")
    a.add_argument("question", help="the question, in plain words")
    a.add_argument("--store", required=True, help="store folder (built by `knnrag index`)")
    a.add_argument("--datastore", help="mix kNN-LM from this token datastore into generation "
                                       "(default: the collection's own, built by `index --knn`)")
    a.add_argument("--no-knn", action="store_true", help="generate with the plain LM, without the collection's datastore")
    a.add_argument("--mode", choices=("auto", "extractive", "generate"), default="auto",
                   help="extractive: copy the answer from a source (no LM); generate: the LM writes it; "
                        "auto (default): generate only with a model of >= 1B parameters")
    a.add_argument("--model", help="answering LM: HF id or local path (default: bundled SmolLM2-135M-Instruct)")
    a.add_argument("-k", type=int, default=5, help="sources to retrieve (default 5)")
    a.add_argument("--collection", default="default", help="collection to answer from (default `default`)")
    a.add_argument("--max-new-tokens", type=int, default=256, help="generate: answer length limit (default 256)")
    a.add_argument("--min-score", type=float, help="drop hits whose dense cosine is below this before answering "
                                                   "(default: none; the fitted abstention model decides)")
    a.add_argument("--abstain-threshold", type=float,
                   help="p(answerable) below which it abstains (default: the fitted one in lm/rag/params.json; "
                        "0 never abstains)")
    a.add_argument("--context-tokens", type=int, help="generate: prompt+answer token budget (default: min(LM context, 1024))")
    a.add_argument("--json", action="store_true", help="print one JSON object (no streaming)")
    a.set_defaults(func=ask)


def _ask_knnlm(args: argparse.Namespace):
    """The answering kNN-LM: --datastore, else the collection's own datastore (citations from
    provenance need it), else the plain LM. The collection's is skipped, with a warning, when
    --model is another LM than the one that built it."""
    from lm.knn_index import datastore_dir
    from lm.knnlm import KNNLM
    from retrieval.errors import MismatchError

    if args.datastore or args.no_knn:
        return KNNLM.load(args.model, datastore=None if args.no_knn else args.datastore)
    own = datastore_dir(Path(args.store).expanduser(), args.collection)
    if not (own / "manifest.json").is_file():
        return KNNLM.load(args.model)
    try:
        return KNNLM.load(args.model, datastore=own)
    except MismatchError as e:
        log.warning("not using the collection's kNN datastore %s: %s", own, e)
        return KNNLM.load(args.model)


def ask(args: argparse.Namespace) -> int:
    from lm.rag.answer import RagConfig, answer, format_sources, marked_answer
    from retrieval.cli.output import emit_json
    from retrieval.store.docstore import DocStore

    if not Path(args.store).expanduser().is_dir():
        raise InvalidInputError(f"no store at {args.store}", "build one with `knnrag index PATH --store DIR`")
    kw = {"k": args.k, "max_new_tokens": args.max_new_tokens, "answer_mode": args.mode, "model": args.model,
          "min_score": args.min_score, "abstain_threshold": args.abstain_threshold}
    if args.context_tokens is not None:
        kw["context_tokens"] = args.context_tokens
    cfg = RagConfig(**kw)
    last = [""]

    def stream(piece: str) -> None:
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
            last[0] = piece

    with DocStore.open(Path(args.store).expanduser(), create=False, read_only=True) as store:
        # generated text and an abstention stream as they come; an extractive answer is printed below, marked
        res = answer(args.question, store=store, knnlm=lambda: _ask_knnlm(args), collection=args.collection,
                     config=cfg, on_token=None if args.json else stream)
    if args.json:
        emit_json(res.to_dict())
        return 0
    if not res.streamed:
        text = marked_answer(res)
        sys.stdout.write(text)
        last[0] = text
    if not last[0].endswith("\n"):
        sys.stdout.write("\n")
    if res.citations:
        sys.stdout.write("\n" + format_sources(res) + "\n")
    sys.stdout.flush()
    return 0
