"""The store commands' extension point (retrieval/cli/extend.py): hooks add to `index` and `stats`
output, in order, without replacing retrieval's handlers."""
from __future__ import annotations

import argparse
import json

import pytest

from retrieval.cli.extend import Contribution, add_hook


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    from retrieval.cli.store import register

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    return p, sub


def _run(p: argparse.ArgumentParser, argv: list[str]) -> int:
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# Tides\n\nThe moon pulls the sea twice a day.\n")
    return d


def test_hooks_add_to_index_and_stats_output_in_order(tmp_path, docs, capsys):
    p, sub = _parser()
    seen: list[str] = []

    def first(args: argparse.Namespace) -> Contribution:
        seen.append(args.command)
        return Contribution("extra", {"n": 1}, ["extra line one", "extra line two"])

    def skipped(args: argparse.Namespace) -> None:
        seen.append("skipped")

    add_hook(sub.choices["index"], first)
    add_hook(sub.choices["index"], skipped)
    add_hook(sub.choices["stats"], lambda args: Contribution("more", [1, 2], ["more line"]))
    store = ["--store", str(tmp_path / "s"), "--embedder", "hash-64"]
    assert _run(p, ["index", str(docs), *store, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["added"] == 1 and d["extra"] == {"n": 1} and list(d)[-1] == "extra" and seen == ["index", "skipped"]

    assert _run(p, ["index", str(docs), *store]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("default: 1 files seen") and out[-2:] == ["extra line one", "extra line two"]

    assert _run(p, ["stats", "--store", str(tmp_path / "s"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["collections"][0]["chunks"] == 1 and st["more"] == [1, 2]
    assert _run(p, ["stats", "--store", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "more line"


def test_failed_command_runs_no_hook(tmp_path, capsys):
    from retrieval.errors import NotFoundError

    p, sub = _parser()
    ran: list[int] = []

    def hook(args: argparse.Namespace) -> None:
        ran.append(1)

    add_hook(sub.choices["stats"], hook)
    with pytest.raises(NotFoundError):
        _run(p, ["stats", "--store", str(tmp_path / "none")])
    assert ran == [] and capsys.readouterr().out == ""


def test_hooks_belong_to_one_parser_and_only_to_index_and_stats():
    p1, sub1 = _parser()
    p2, sub2 = _parser()
    add_hook(sub1.choices["index"], lambda args: None)
    assert sub1.choices["index"].get_default("store_command_hooks") != []
    assert sub2.choices["index"].get_default("store_command_hooks") == []  # a second parser starts clean
    with pytest.raises(ValueError, match="takes no hooks"):
        add_hook(sub1.choices["search"], lambda args: None)


def test_lm_extends_through_hooks_not_by_replacing_handlers():
    from lm.cli import register as lm_register
    from retrieval.cli.store import cmd_index, cmd_stats

    p, sub = _parser()
    lm_register(sub)
    assert sub.choices["index"].get_default("func") is cmd_index
    assert sub.choices["stats"].get_default("func") is cmd_stats
    assert len(sub.choices["index"].get_default("store_command_hooks")) == 1
    assert len(sub.choices["stats"].get_default("store_command_hooks")) == 1
