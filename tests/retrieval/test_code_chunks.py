"""Code chunked by syntax: one chunk per definition, exact offsets, names carried by every part."""
from __future__ import annotations

import ast

import pytest

from retrieval.embed.hash_embedder import HashEmbedder
from retrieval.ingest.chunking import ChunkerConfig, chunk_document
from retrieval.ingest.code_syntax import grammar_available
from retrieval.ingest.sources import kind_of
from retrieval.types import SourceDocument

pytestmark = pytest.mark.skipif(not grammar_available("python"), reason="tree-sitter grammars not installed")
SPANS = HashEmbedder(64).token_spans

PY = '''import os

LIMIT = 3


@decorated
def top(a, b):
    """Add two numbers."""
    return a + b


class Option:
    """A command line option."""

    flag = True

    def get_help_extra(self, ctx):
        def fmt(x):
            return str(x)
        return fmt(ctx)

    @property
    def name(self):
        return "n"


if __name__ == "__main__":
    top(1, 2)
'''


def _doc(source: str, text: str) -> SourceDocument:
    kind, lang = kind_of(source)
    return SourceDocument(source, text, kind, "h", metadata={"language": lang} if lang else {})


def _chunks(source: str, text: str, max_tokens: int = 254):
    doc = _doc(source, text)
    got = chunk_document(doc, SPANS, ChunkerConfig(max_tokens=max_tokens, overlap_tokens=0))
    for c in got:
        assert text[c.start_char : c.end_char] == c.text  # offsets reproduce the text
        assert c.start_line == text.count("\n", 0, c.start_char) + 1
        assert len(SPANS(c.index_text)) <= max_tokens
    return got


def test_every_python_function_and_method_is_its_own_chunk():
    chunks = _chunks("pkg/cli/options.py", PY)
    by_name = {c.heading: c for c in chunks}
    tree = ast.parse(PY)
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {h.rsplit(".", 1)[-1] for h in by_name} >= names
    top = by_name["top"]
    assert top.text.startswith("@decorated") and '"""Add two numbers."""' in top.text
    assert top.metadata["kind"] == "function" and top.metadata["language"] == "python"
    assert top.metadata["signature"] == "def top(a, b):"
    assert top.index_text.startswith("cli/options.py top ")
    method = by_name["Option.get_help_extra"]
    assert method.metadata["kind"] == "method" and method.metadata["symbol"] == "Option.get_help_extra"
    assert "return fmt(ctx)" in method.text or any(
        c.heading == "Option.get_help_extra" and "return fmt(ctx)" in c.text for c in chunks)
    assert by_name["Option.get_help_extra.fmt"].metadata["kind"] == "function"  # nested: its own chunk
    assert "def fmt(x): return str(x)" not in method.index_text.split("Option.get_help_extra", 1)[1]
    cls = by_name["Option"]
    assert cls.metadata["kind"] == "class" and "def get_help_extra(self, ctx):" in cls.index_text  # the stub
    assert "return fmt" not in cls.text  # the class's hit text is its own lines
    modules = [c for c in chunks if c.metadata["kind"] == "module"]
    assert {m.text for m in modules} == {"import os\n\nLIMIT = 3", 'if __name__ == "__main__":\n    top(1, 2)'}


def test_a_long_definition_is_cut_at_statements_and_every_part_carries_its_name():
    body = "".join(f"    value_{i} = compute_something(value_{i - 1}, {i})\n" for i in range(1, 80))
    text = f"def long_function(argument_one, argument_two):\n    '''Doc.'''\n{body}    return value_79\n"
    chunks = _chunks("mod.py", text, max_tokens=64)
    assert len(chunks) > 3
    for n, c in enumerate(chunks):
        assert c.heading == "long_function" and c.metadata["part"] == f"{n + 1}/{len(chunks)}"
        assert c.index_text.startswith("mod.py long_function")
        assert c.text.startswith(("def long_function", "value_", "return"))  # statement boundaries
        if n:
            assert "def long_function(argument_one, argument_two):" in c.index_text
    assert "".join(c.text for c in chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


SAMPLES = {
    "a.js": ("// adds\nexport function add(a, b) { return a + b; }\nclass Acc { push(x) { this.v += x; } }\n"
             "const mul = (a, b) => a * b;\n", {"add", "Acc", "Acc.push", "mul"}),
    "a.ts": ("export class A { foo(x: number): void { return; } }\ninterface I { a: number }\n", {"A", "A.foo", "I"}),
    "a.tsx": ("export function View(p: Props) { return <div>{p.x}</div>; }\n", {"View"}),
    "a.go": ("package p\n// Foo does\ntype Foo struct { a int }\nfunc (f *Foo) Get(x int) int { return x }\nfunc Top() {}\n",
             {"Foo", "Foo.Get", "Top"}),
    "a.rs": ("/// doc\npub struct S { a: i32 }\nimpl S { pub fn get(&self) -> i32 { self.a } }\nfn top() {}\n",
             {"S", "S.get", "top"}),
    "A.java": ("/** doc */\npublic class A { public A() {} int foo(int x) { return x; } }\n", {"A", "A.A", "A.foo"}),
    "a.c": ("static int add(int a, int b) { return a + b; }\nstruct P { int x; };\n", {"add", "P"}),
    "a.cpp": ("namespace n { class C { public: int f() { return 1; } }; }\nint C::g(int x) { return x; }\n",
              {"n", "n.C", "n.C.f", "C.g"}),
    "a.rb": ("# Greets\nclass Foo < Bar\n  def hello(x)\n    puts x\n  end\nend\n", {"Foo", "Foo.hello"}),
    "a.sh": ("# does x\nfoo() {\n  echo hi\n}\nfunction bar {\n  ls\n}\n", {"foo", "bar"}),
}


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_each_language_parses_into_definitions(source):
    text, want = SAMPLES[source]
    chunks = _chunks(source, text)
    assert {c.heading for c in chunks if c.metadata["kind"] != "module" or c.heading != c.source.rsplit(".", 1)[0]} >= want
    assert all(c.metadata["chunking"] == "syntax" for c in chunks)
    kinds = {c.heading: c.metadata["kind"] for c in chunks}
    for name in want:
        if "." in name and kinds[name] not in ("class", "module"):
            assert kinds[name] == "method", name


def test_a_syntax_error_falls_back_to_lines_with_the_reason():
    text = "def ok():\n    return 1\n\n\ndef broken(:\n    pass\n"
    chunks = _chunks("bad.py", text)
    assert chunks and all(c.metadata["chunking"] == "lines" for c in chunks)
    assert "syntax error near line 5" in chunks[0].metadata["fallback"]


def test_unsupported_code_languages_keep_the_line_chunker():
    chunks = _chunks("conf.toml", "[tool]\nname = 'x'\n")
    assert chunks and "chunking" not in chunks[0].metadata


def test_non_ascii_offsets_are_characters():
    text = "# café ☕ naïve\ndef grüß(x):\n    return 'ü' * x\n\ndef after():\n    return 2\n"
    chunks = _chunks("u.py", text)
    assert {c.heading for c in chunks} >= {"grüß", "after"}
    assert next(c for c in chunks if c.heading == "after").text == "def after():\n    return 2"


def test_python_without_the_grammar_wheels_uses_ast(monkeypatch):
    from retrieval.ingest import code_chunks

    with_grammar = [(c.heading, c.start_char, c.end_char) for c in _chunks("pkg/cli/options.py", PY)]
    monkeypatch.setattr(code_chunks, "grammar_available", lambda language: False)
    without = [(c.heading, c.start_char, c.end_char) for c in _chunks("pkg/cli/options.py", PY)]
    assert without == with_grammar
    bad = _chunks("bad.py", "def broken(:\n    pass\n")
    assert bad[0].metadata["chunking"] == "lines" and "line 1" in bad[0].metadata["fallback"]
