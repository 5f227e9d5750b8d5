"""Every `knnrag` option whose help names a default names the one the parser really applies.

Options whose parser default is None resolve their default in the code that runs (a datastore's
calibrated k, the LM's context); their help describes that rule and is not checked here.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

UNITS = {"MiB": 2**20, "MB": 1, "s": 1}  # --max-file-mb is in MB already; --max-request-bytes is in bytes
ALIASES = {"loopback": "127.0.0.1"}
DOCUMENTED = re.compile(r"default:? `?([\w.-]+)`?(?: (MiB|MB)\b)?")


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.Action]]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _options(sub, (*path, name))
        elif a.help and a.help != argparse.SUPPRESS:
            yield " ".join((*path, "/".join(a.option_strings) or a.dest)), a


def _documented(a: argparse.Action) -> object | None:
    """The default the help names, or None when it names none."""
    help_ = a.help or ""
    if "(default)" in help_ and a.choices:  # "hybrid: both fused (default)": the choice named last before it
        before = help_[: help_.index("(default)")]
        return max((c for c in a.choices if re.search(rf"\b{re.escape(str(c))}\b", before)),
                   key=lambda c: before.rfind(str(c)), default=None)
    m = DOCUMENTED.search(help_)
    if m is None:
        return None
    word, unit = m.group(1), m.group(2)
    if isinstance(a.default, (int, float)) and not isinstance(a.default, bool):
        try:
            return float(word) * UNITS.get(unit or "", 1)
        except ValueError:
            return word
    return ALIASES.get(word, word)


def _checked() -> list[tuple[str, argparse.Action]]:
    from retrieval.cli.root import build_parser

    return [(name, a) for name, a in _options(build_parser())
            if a.default is not None and not isinstance(a.default, bool) and a.default != []
            and _documented(a) is not None]


def test_documented_defaults_equal_the_parsers():
    checked = _checked()
    assert len(checked) >= 20, [n for n, _ in checked]  # the check covers the commands, not a handful of options
    wrong = [f"{name}: help says {_documented(a)!r}, parser default {a.default!r}" for name, a in checked
             if _documented(a) != a.default]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("help_, default, documented", [
    ("results (default 10, at most 10000)", 10, 10.0),
    ("limit (default 1 MiB)", 2**20, 2.0**20),
    ("dense, bm25, or hybrid: both fused (default)", "hybrid", "hybrid"),
    ("bind address (default loopback only)", "127.0.0.1", "127.0.0.1"),
])
def test_the_check_reads_each_way_a_default_is_written(help_, default, documented):
    a = argparse.ArgumentParser().add_argument("--x", default=default, help=help_,
                                               choices=("dense", "bm25", "hybrid") if default == "hybrid" else None)
    assert _documented(a) == documented
    b = argparse.ArgumentParser().add_argument("--y", default=7, help="a number (default 8)")
    assert _documented(b) != b.default  # a drifted help text is caught
