"""The extension point of the store commands `index`, `delete` and `stats`.

Other packages add to these commands without retrieval importing them (layers point down) and
without replacing retrieval's handlers. A package's registrar, called after
`retrieval.cli.store.register` (lm.cli.register calls lm.knn_index.register), adds its flags to
the sub-parser and appends a hook:

    from retrieval.cli.extend import Contribution, add_hook

    index = sub.choices["index"]
    index.add_argument("--knn", action="store_true", help="...")
    add_hook(index, after_index)     # after_index(args) -> Contribution | None

After the store command has succeeded and closed its store, the hooks run in the order they were
added. A hook's Contribution puts `value` into the command's --json object under `key` and prints
`lines` after the command's own text; a hook returns None to add nothing (say, its flag was not
given). An exception in a hook fails the command as any store error does. The hooks live on the
parser (an argparse default), so each parser built gets its own list.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Contribution", "Hook", "accept_hooks", "add_hook", "merged", "run_hooks"]

_DEST = "store_command_hooks"


class Contribution(NamedTuple):
    """What one hook adds to a store command's output."""

    key: str  # the key of `value` in the command's --json object
    value: object  # JSON-serialisable
    lines: list[str]  # printed after the command's own text (without --json), one per line


Hook = Callable[[argparse.Namespace], "Contribution | None"]


def accept_hooks(parser: argparse.ArgumentParser) -> None:
    """Let other packages extend this store command (retrieval's register calls it)."""
    parser.set_defaults(**{_DEST: []})


def add_hook(parser: argparse.ArgumentParser, hook: Hook) -> None:
    """Run `hook(args)` after every successful run of the command `parser` parses."""
    hooks = parser.get_default(_DEST)
    if hooks is None:
        raise ValueError(f"`{parser.prog}` takes no hooks: only the store commands index, delete and stats do")
    hooks.append(hook)


def run_hooks(args: argparse.Namespace) -> list[Contribution]:
    """The contributions of the command's hooks, in the order they were added."""
    return [c for hook in getattr(args, _DEST, ()) if (c := hook(args)) is not None]


def merged(obj: dict, contributions: list[Contribution]) -> dict:
    """The command's --json object with every contribution under its key."""
    return {**obj, **{c.key: c.value for c in contributions}}
