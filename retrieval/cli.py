"""The `knnrag` console command: one argparse tree, sub-commands registered by each package.

Heavy libraries (torch, transformers, sentence-transformers) are imported inside handlers only,
so `knnrag search` never pays for what it does not use. Library errors (KnnragError) become one
clear message on stderr (or one JSON object on stdout with --json) and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Sequence

from retrieval.errors import KnnragError

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    """Each package contributes its sub-commands; the modules are cheap to import."""
    from retrieval import commands as retrieval_commands
    from lm import commands as lm_commands
    from mcp_server import commands as mcp_commands

    mods = (retrieval_commands, lm_commands, mcp_commands)
    return [m.register for m in mods if hasattr(m, "register")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knnrag",
        description="Document RAG and kNN-LM over one FAISS datastore. Run `knnrag COMMAND -h` for help.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _registrars():
        register(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("KNNRAG_LOG", "WARNING").upper(), logging.WARNING)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def emit_json(obj: object) -> None:
    """The one JSON document a --json command prints on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    as_json = bool(getattr(args, "json", False))
    try:
        code = args.func(args)
        return int(code or 0)
    except KnnragError as e:
        if as_json:
            emit_json({"error": e.message, "hint": e.hint, "type": type(e).__name__})
        else:
            sys.stderr.write(f"error: {e.message}\n")
            if e.hint:
                sys.stderr.write(f"hint: {e.hint}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: the last committed state of every store is intact\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
