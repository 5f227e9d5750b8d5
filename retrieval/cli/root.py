"""The `knnrag` console command: one argparse tree, sub-commands registered by each package.

Heavy libraries (torch, transformers, sentence-transformers) are imported inside handlers only,
so `knnrag search` never pays for what it does not use. Library errors (KnnragError) become one
clear message on stderr (or one JSON object on stdout with --json) and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from retrieval.cli.output import emit_json
from retrieval.errors import KnnragError

Registrar = Callable[[argparse._SubParsersAction], None]
ENTRY_POINT_GROUP = "knnrag.commands"


def _registrars() -> list[Registrar]:
    """Sub-commands come from the `knnrag.commands` entry points (pyproject.toml), the way
    simonw/llm finds its plugins: this root never imports the packages above it (lm, mcp_server).

    The store commands are this package's own, so they are there even when the distribution's
    metadata is missing (running from a source tree that was never installed).
    """
    from importlib.metadata import entry_points

    from retrieval.cli import store

    found: dict[str, Registrar] = {"store": store.register}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in found:
            continue
        try:
            found[ep.name] = ep.load()
        except ImportError as e:  # a stale or broken plugin must not take the other commands down, nor vanish unseen
            logging.getLogger(__name__).warning("skipping knnrag command plugin %r (%s); reinstall knnrag", ep.name, e)
    return list(found.values())


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: the message (an invalid choice names the valid ones) and
    where to read more, not the whole usage block first. Sub-command parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nhint: run `{self.prog} -h` for the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
