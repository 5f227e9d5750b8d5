"""Extractive answers over technical documentation: titles, inline code and stated defaults.

SQuAD-style prose (what the phrase scorer was fitted on) has none of these, and a new user's first
questions about docs are often "what is the default X?": the answer is a value written next to the
word default, under X's heading, usually as inline code.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lm.rag import answer as rag
from lm.rag.spans import Span, asks_default, asks_key, code_spans, default_values, row_key, sentence_words, sentences
from tests.support.guards import MustNotLoad

OPTIONS_RST = """S3 Configuration
================

These values must be set under the top level ``s3`` key in the config file,
which has a default location of ``~/.aws/config``.

max_concurrent_requests
-----------------------

**Default** - ``10``

The transfer commands are multithreaded. At any given time, multiple requests
are in flight, and this setting caps how many.

max_queue_size
--------------

**Default** - ``1000``

The tool queues up tasks that are then executed by a bound thread pool. A larger
queue size will require more memory.

retry_mode
----------

The retry mode decides how failed calls are repeated. By default, this option
is set to ``legacy``. Valid values are ``standard`` and ``adaptive``.
"""

FLAGS_MD = """# Server flags

| flag | meaning |
|---|---|
| `--port N` | the port to listen on (default 8000) |
| `--workers N` | worker threads for search (default 4) |

The server reads its settings at start.
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from retrieval.store.docstore import DocStore

    root = tmp_path_factory.mktemp("docs")
    (root / "s3-config.rst").write_text(OPTIONS_RST)
    (root / "flags.md").write_text(FLAGS_MD)
    s = DocStore.open(tmp_path_factory.mktemp("store") / "s")  # the bundled MiniLM: relevance and abstention are real
    s.index_paths([str(root)])
    yield s
    s.close()


def _words(sent: Span):
    return sentence_words(sent, lambda w: 0.0, 1.0)


def test_titles_are_no_sentences_and_inline_code_is_one_span():
    ss = sentences(OPTIONS_RST)
    assert not any(s.text.startswith(("S3 Configuration", "max_concurrent_requests", "max_queue_size")) for s in ss)
    assert "**Default** - ``10``" in [s.text for s in ss]
    loc = next(s for s in ss if "default location" in s.text)
    codes = code_spans(loc)
    assert [c.text for c in codes] == ["s3", "~/.aws/config"]
    assert all(OPTIONS_RST[c.start:c.end] == c.text for c in codes)
    assert [c.text for c in code_spans(Span(0, 21, "set `--port N` first."))] == ["--port N"]


@pytest.mark.parametrize("text, value", [
    ("**Default** - ``10``", "10"),
    ("the port to listen on (default 8000)", "8000"),
    ("and by default, the value is set to 3600 seconds.", "3600"),
    ("By default, this option is set to ``legacy``.", "legacy"),
    ("* true - This is the default value.", "true"),
    ("* ``ignore`` - (Default) Case conflicts are not handled.", "ignore"),
    ("The mode defaults to ``auto`` on new stores.", "auto"),
    ("* ``max_retries`` - Number of retries (default 3).", "3"),
    ("By default on Linux, the cache directory is ``~/.cache/knnrag``.", "cache/knnrag"),  # the first word in the code
    ("- Default: the bundled SmolLM2-135M-Instruct model.", "SmolLM2-135M-Instruct"),
])
def test_default_values_are_the_value_next_to_the_word_default(text, value):
    sent = Span(0, len(text), text)
    sw = _words(sent)
    assert [sw.words[k].text for k in sorted(default_values(sw, sent))] == [value]


def test_no_default_value_without_one():
    for text in ("by default we queue tasks ahead.", "The default behaviour is described below.",
                 "Never worse: the old fixed defaults were 13-14% worse.",
                 "When a company defaults, Moody's lowers its rating.",
                 "The default behaviour is described in the Configuration guide.",
                 "* Decreasing this value - On some systems the default is too high."):
        sent = Span(0, len(text), text)
        assert not default_values(_words(sent), sent), text
    assert asks_default("What is the default max_queue_size?") and asks_default("What does retry_mode default to?")
    assert not asks_default("Which defaulting rules apply?") and not asks_default("What is the queue size?")


@pytest.mark.integration
@pytest.mark.parametrize("question, want", [
    ("What is the default max_queue_size?", "1000"),
    ("What is the default value of max_concurrent_requests?", "10"),
    ("What is the default retry_mode?", "legacy"),
    ("What is the default port of the server?", "8000"),
    ("Which flag sets the worker threads for search?", "--workers N"),
])
def test_doc_questions_get_the_stated_value_with_exact_offsets(store, question, want):
    res = rag.answer(question, store=store, knnlm=MustNotLoad(), config=rag.RagConfig(answer_mode="extractive"))
    assert res.mode == "extractive" and res.grounded and res.answer == want, (res.answer, res.answer_span)
    span = res.answer_span
    assert span is not None
    (chunk,) = store.get([span.chunk_id])
    assert chunk.text[span.chunk_start:span.chunk_end] == want  # the offsets reproduce the answer
    doc = Path(span.source).read_text()
    assert doc[span.start_char:span.end_char] == want
    assert span.start_line == span.end_line and want in doc.splitlines()[span.start_line - 1]


def _evidence(question: str, text: str, weights: dict[str, float], heading: str = ""):
    from lm.rag.evidence import Evidence, Sentence
    from retrieval.types import Hit

    sents = [Sentence(0, x, 1.0, 1.0, 0.5, 1.0 - 0.1 * n) for n, x in enumerate(sentences(text))]
    return Evidence(question, [Hit("0", 1.0, {"dense": 1.0}, text, "t.md", 0, len(text), 1, 1, heading)], sents,
                    list(weights), 0.0, weights, lambda w: re.findall(r"\w+", w.lower()))


def test_a_default_stated_about_something_else_is_not_taken():
    """Of "compression level of the server" only "server" is in the row (via its heading): no cue."""
    from lm.rag.extract import candidate_table

    row = "| `--port N` | the port to listen on (default 8000) |"
    off = _evidence("What is the default compression level of the server?", row,
                    {"compression": 1.0, "level": 0.8, "server": 0.3}, heading="Server flags")
    assert not any(c.cue for c in candidate_table(off))
    on = _evidence("What is the default port of the server?", row, {"port": 1.0, "server": 0.3}, heading="Server flags")
    assert [c.span.text for c in candidate_table(on) if c.cue] == ["8000"]


def test_a_value_in_code_gets_the_cue_whole_and_short_flags_are_candidates():
    from lm.rag.extract import best_span, candidate_table

    ev = _evidence("What is the default cache directory?", "By default the cache directory is ``~/.cache/knnrag``.",
                   {"cache": 0.8, "directory": 1.0})
    assert [c.span.text for c in candidate_table(ev) if c.cue] == ["~/.cache/knnrag"]
    ev = _evidence("Which flag enables verbose output?", "| `-v` | enables verbose output |\n| `-q` | quiet output |",
                   {"enables": 0.5, "verbose": 1.0, "output": 0.4})
    ex = best_span(ev)
    assert ex is not None and ex.span.text == "-v"


def test_table_rows_are_sentences_and_name_their_key():
    ss = [x.text for x in sentences(FLAGS_MD)]
    assert "| `--port N` | the port to listen on (default 8000) |" in ss and not any(set(x) <= set("|- :") for x in ss)
    row = next(x for x in sentences(FLAGS_MD) if "--workers" in x.text)
    sw = _words(row)
    assert [sw.words[k].text for k in row_key(sw, row)] == ["workers"]  # the first word of `--workers N`
    item = "* ``255`` -- Command failed."
    sent = Span(0, len(item), item)
    assert [_words(sent).words[k].text for k in row_key(_words(sent), sent)] == ["255"]
    prose = "The `--port N` flag sets the port."
    assert not row_key(_words(Span(0, len(prose), prose)), Span(0, len(prose), prose))
    assert asks_key("Which option tags every chunk?") and asks_key("What return code means failure?")
    assert not asks_key("What is the port?") and not asks_key("What does --tag do?") and not asks_key("Which default applies?")
    for q in ("What port does the server listen on?", "What year did the river flood?", "What version of Python is needed?"):
        assert not asks_key(q), q  # a value inside the description, not a row's key
    assert asks_key("Which environment variable holds the token?") and asks_key("What return code means success?")


def test_lead_ins_header_rows_numbered_items_and_overlined_titles():
    text = "Codes:\n* ``0`` -- success.\n* ``255`` -- failed.\n\n1. `--fast` turns on the fast path.\n\n=====\nTitle\n=====\n\nBody text here."
    ss = sentences(text)
    assert [x.text for x in ss] == ["Codes:", "* ``0`` -- success.", "* ``255`` -- failed.", "1. `--fast` turns on the fast path.",
                                    "Body text here."]
    item = ss[3]
    assert [_words(item).words[k].text for k in row_key(_words(item), item)] == ["fast"]
    assert [x.text for x in sentences(FLAGS_MD)][:1] == ["| `--port N` | the port to listen on (default 8000) |"]  # no header row
