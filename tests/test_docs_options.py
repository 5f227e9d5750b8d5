"""The option tables in docs/ agree with the argparse parsers: every option of every `knnrag` sub-command is in
its command's table, no table lists an option the command lacks, and a documented default is the parser's.

A command's table is the first `| option | default | meaning |` table after a heading that names the command in
code (`## `knnrag datastore build CORPUS... --out DIR``). The default cell is checked against the parser where the
parser holds the default: a flag reads `off`, an empty list `none...`, a value its first code span (`` `0.9` ``).
Where the parser's default is None (the value is computed at run time: "the datastore's calibrated k"), the cell
must say what it is, in words, and `required` for a required option.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from retrieval.cli.root import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


class Row(NamedTuple):
    options: tuple[str, ...]
    default: str
    where: str


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """'datastore build' -> its parser, for every sub-command that takes options (no further sub-commands)."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[" ".join(path)] = p
        for s in subs:
            for name, sp in s.choices.items():
                walk(sp, [*path, name])

    walk(build_parser(), [])
    return out


def option_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def tables(pages: dict[str, str], commands: list[str]) -> dict[str, list[Row]]:
    """command -> the rows of its option table, from markdown pages (name -> text)."""
    out: dict[str, list[Row]] = {}
    by_length = sorted(commands, key=len, reverse=True)
    for name, text in sorted(pages.items()):
        current: str | None = None
        in_table, fence = False, False
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            m = re.match(r"^#{1,6} .*?`knnrag ([^`]*)`", line)
            if m:
                current = next((c for c in by_length if (m.group(1) + " ").startswith(c + " ")), None)
                in_table = False
                continue
            if line.startswith("#"):
                current = None
            if current and re.match(r"^\|\s*option\s*\|\s*default\s*\|", line, re.I):
                in_table = current not in out
                out.setdefault(current, [])
                continue
            if in_table and current and line.startswith("|"):
                cells = _cells(line)
                opts = tuple(re.findall(r"`(-{1,2}[\w-]+)", cells[0]))
                if opts:
                    out[current].append(Row(opts, cells[1], f"{name}:{n}"))
            elif in_table and not line.startswith("|"):
                in_table = False
    return out


def _first_value(cell: str) -> str:
    m = re.search(r"`([^`]*)`", cell)
    return m.group(1) if m else cell.split()[0] if cell.split() else ""


def default_problem(a: argparse.Action, cell: str) -> str | None:
    """None if the documented default `cell` agrees with the parser's default of `a`, else why not."""
    cell = cell.strip()
    if not cell:
        return "no default documented"
    if a.required:
        return None if cell.lower().startswith("required") else f"documented {cell!r}, but the option is required"
    if isinstance(a, FLAG_ACTIONS) and a.default is not None:
        return None if cell.lower().startswith("off") else f"a flag: documented {cell!r}, expected 'off'"
    if a.default == []:
        return None if cell.lower().startswith("none") else f"documented {cell!r}, but nothing is the default"
    if a.default is None:
        return None  # computed at run time: the cell says what it is, in words
    want, got = a.default, _first_value(cell)
    if isinstance(want, bool):
        return None if got.lower() in (str(want).lower(), "on" if want else "off") else f"documented {got!r}, parser {want!r}"
    if isinstance(want, (int, float)):
        try:
            same = float(got.replace(",", "").replace("_", "")) == float(want)
        except ValueError:
            same = False
        return None if same else f"documented {got!r}, parser {want!r}"
    return None if got == str(want) else f"documented {got!r}, parser {want!r}"


def problems(pages: dict[str, str]) -> list[str]:
    parsers = leaf_parsers()
    found = tables(pages, list(parsers))
    out = []
    for cmd, p in sorted(parsers.items()):
        rows = found.get(cmd)
        if rows is None:
            out.append(f"knnrag {cmd}: no option table (a heading naming `knnrag {cmd}` followed by | option | default |)")
            continue
        by_opt = {o: r for r in rows for o in r.options}
        known = {s for a in option_actions(p) for s in a.option_strings}
        for a in option_actions(p):
            row = next((by_opt[s] for s in a.option_strings if s in by_opt), None)
            if row is None:
                out.append(f"knnrag {cmd}: {'/'.join(a.option_strings)} is not in its option table")
                continue
            why = default_problem(a, row.default)
            if why:
                out.append(f"knnrag {cmd} {a.option_strings[-1]} ({row.where}): {why}")
        for r in rows:
            stale = [o for o in r.options if o not in known]
            if stale and not set(r.options) & known:
                out.append(f"knnrag {cmd} ({r.where}): {', '.join(stale)} is documented but the command has no such option")
    return out


def doc_pages() -> dict[str, str]:
    return {str(p.relative_to(DOCS)): p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))}


def test_every_option_is_documented_with_the_parsers_default():
    found = problems(doc_pages())
    assert not found, "docs/ and the CLI disagree:\n" + "\n".join(found)


def test_every_global_option_is_documented():
    text = "\n".join(doc_pages().values())
    for a in option_actions(build_parser()):
        assert any(f"`{s}`" in text for s in a.option_strings), a.option_strings


@pytest.mark.parametrize("edit, expect", [
    (("| `-k K` | `10` |", "| `-k K` | `20` |"), "knnrag search -k"),                  # a wrong default
    (("| `--near-dup T` | `0.9` |", "| `--near-dup T` | `0.8` |"), "--near-dup"),
    (("| `--force` | off |", "| `--force` | on |"), "--force"),                         # a flag documented as on
    (("| `--mmr` | off |", ""), "--mmr is not in its option table"),                    # a missing option
    (("| `--json` | off | print one JSON document on stdout |", "| `--json` | off | x |\n| `--jsn` | off | y |"),
     "--jsn is documented"),                                                            # a stale option
])
def test_the_check_fails_on_drift(edit, expect):
    pages = doc_pages()
    old, new = edit
    name = next(n for n, t in pages.items() if old in t)
    pages[name] = pages[name].replace(old, new, 1)
    assert any(expect in p for p in problems(pages)), problems(pages)


def test_context_tokens_documents_the_codes_budget():
    """The help text once said 2048 while answer() used 1024: the docs state what the code does."""
    import inspect

    from lm.rag import answer

    src = inspect.getsource(answer)
    code = re.search(r"min\(int\(getattr\(lm, \"max_length\", (\d+)\) or \d+\), (\d+)\)", src)
    assert code is not None, "answer()'s context budget moved: update this test and docs/ask.md"
    row = next(r for r in tables(doc_pages(), ["ask"])["ask"] if "--context-tokens" in r.options)
    assert code.group(2) in row.default and "2048" not in row.default


REPO = DOCS.parent


def test_json_snippets_parse():
    """The client configurations and output examples users copy are valid JSON."""
    import json

    for path in [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for m in re.finditer(r"```json\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            json.loads(m.group(1))


def test_readme_is_the_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move reference material to docs/"
    head = "\n".join(lines[:10])
    assert "bash scripts/demo.sh" in head and "bash scripts/test.sh" in head
    linked = set(re.findall(r"\]\(docs/([\w./-]+\.md)\)", text))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    every = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert {p for p in every if p not in nav} == set(), "pages missing from mkdocs.yml's nav"


def test_no_work_period_labels():
    """Figures and notes name dates, commits and versions, not a private numbering of work periods."""
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "ARCHITECTURE.md", *DOCS.rglob("*.md"),
             *(REPO / "benchmarks").rglob("*.py"), *(REPO / "benchmarks").rglob("*.md"), *(REPO / "benchmarks").rglob("*.jsonl")]
    found = [f"{p.relative_to(REPO)}:{n}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\b(sessions? \d|round \d|round-\d)", line, re.I)]
    assert not found, found
