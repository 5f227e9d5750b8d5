"""RAG answers: retrieval -> prompt that fits -> generation -> [n] citations mapped to files and lines."""
from __future__ import annotations

import json
import os
import re

import pytest

from lm.rag import answer as rag  # noqa: E402
from retrieval.errors import InvalidInputError  # noqa: E402
from retrieval.types import Hit
from tests.support.docs import write_docs
from tests.support.tiny_lm import make_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from lm.models import load_lm

    return load_lm(str(make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), vocab='word')))


@pytest.fixture(scope="module")
def knnlm(tiny_lm):
    from lm.knnlm import KNNLM

    return KNNLM.load(tiny_lm, datastore=None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from retrieval.store.docstore import DocStore

    docs = write_docs(tmp_path_factory.mktemp("docs"))
    s = DocStore.open(tmp_path_factory.mktemp("store") / "s", embedder="hash-64")
    s.index_paths([str(docs)])
    yield s
    s.close()


class MustNotGenerate:
    has_datastore = False

    def generate(self, *a, **k):
        raise AssertionError("the LM must not be called when nothing relevant was retrieved")


def test_extract_citations():
    assert rag.extract_citations("A [1]. B [2, 3] and [1][4]; not [a] or [ 5 ].") == [1, 2, 3, 4]
    assert rag.extract_citations("no markers") == []


def test_config_is_validated():
    with pytest.raises(InvalidInputError):
        rag.RagConfig(k=0)
    with pytest.raises(InvalidInputError):
        rag.RagConfig(mode="fuzzy")
    with pytest.raises(InvalidInputError):
        rag.RagConfig(context_tokens=10)


@pytest.mark.parametrize("budget", [90, 130, 200, 400, 1000])
def test_prompt_never_overflows(tiny_lm, budget):
    tok = tiny_lm.tokenizer
    hits = [Hit(str(i), 0.5, {"dense": 0.5}, "the path is in the route and it is passed to you " * 60, f"doc{i}.md",
                0, 3000, 1, 40, "H") for i in range(6)]
    prompt, used, n = rag.fit_sources("how are path parameters declared", hits, tok, budget, max_source_tokens=200)
    assert n == rag.count_tokens(tok, prompt) <= budget
    assert all(u.truncated for u in used)  # every source was cut to fit
    assert "[1] doc0.md (lines 1-40)" in prompt if used else "(no sources)" in prompt
    assert "Question: how are path parameters declared" in prompt


def test_question_longer_than_the_budget_is_refused(tiny_lm):
    with pytest.raises(InvalidInputError, match="question alone"):
        rag.fit_sources("the path " * 500, [], tiny_lm.tokenizer, 100, 50)


def test_nothing_relevant_says_so_and_does_not_call_the_lm(store, tiny_lm):
    streamed = []
    res = rag.answer("quantum zebra migration patterns", store=store, knnlm=MustNotGenerate(), lm=tiny_lm,
                     on_token=streamed.append)
    assert not res.grounded and res.citations == []
    assert "could not find anything relevant" in res.answer and "not guess" in res.answer
    assert "".join(streamed) == res.answer


def test_answer_with_citations_mapped_to_lines(store, knnlm, tiny_lm):
    pieces: list[str] = []
    cfg = rag.RagConfig(k=3, max_new_tokens=12, min_score=0.2, answer_mode="generate")
    res = rag.answer("How are path parameters declared in the route?", store=store, knnlm=knnlm, lm=tiny_lm,
                     config=cfg, on_token=pieces.append)
    assert res.citations and res.mode == "generate"
    assert res.grounded == any(c.cited for c in res.citations)
    assert res.prompt_tokens <= min(tiny_lm.max_length, 1024) - cfg.max_new_tokens
    first = res.citations[0]
    assert first.n == 1 and first.source.endswith("routing.md")
    assert (first.start_line, first.end_line) == (1, 4)
    assert first.uri == f"chunk://default/{first.chunk_id}"
    shown = "".join(pieces).strip()  # the streamed text is the answer, less any attributed markers
    assert shown == (re.sub(r" \[\d+\]", "", res.answer) if res.attributed else res.answer)
    assert res.model == tiny_lm.model_id and res.used_knn is False


def test_citation_markers_are_checked(store, tiny_lm, monkeypatch):
    class Scripted:
        has_datastore = True

        def generate(self, prompt, **kw):
            assert "[1] " in prompt and "Question:" in prompt
            return "Curly braces [1], see also [9]."

    res = rag.answer("How are path parameters declared in the route?", store=store, knnlm=Scripted(), lm=tiny_lm,
                     config=rag.RagConfig(answer_mode="generate"))
    assert res.mode == "generate" and res.grounded
    assert [c.n for c in res.citations if c.cited] == [1]
    assert res.invalid_citations == [9] and "[9]" in res.note
    assert res.used_knn is True
    text = rag.format_sources(res)
    assert "[1] " in text and "routing.md:1-4" in text


def test_cli_ask_json_and_streaming(store, tmp_path, capsys):
    from retrieval.cli.root import main

    lm_dir = make_tiny_lm(tmp_path / "lm", vocab='word')
    args = ["ask", "How are path parameters declared in the route?", "--store", str(store.path), "--model", str(lm_dir),
            "-k", "2", "--max-new-tokens", "8"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grounded"] and out["citations"][0]["source"].endswith("routing.md")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Sources:" in text and "routing.md:1-4" in text
    assert main(["ask", "quantum zebra", "--store", str(store.path), "--model", str(lm_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grounded"] is False
    assert main(["ask", "x", "--store", str(tmp_path / "nope"), "--json"]) == 2
    assert "no store" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.integration
def test_bundled_models_answer_with_a_citation(tmp_path):
    """SmolLM2-135M-Instruct + MiniLM, end to end: a grounded answer that cites the routing doc."""
    from lm.knnlm import KNNLM
    from lm.models import load_lm
    from retrieval.store.docstore import DocStore

    docs = write_docs(tmp_path / "docs")
    with DocStore.open(tmp_path / "store") as s:
        s.index_paths([str(docs)])
        lm = load_lm(None)
        knn = KNNLM.load(lm, datastore=None)
        res = rag.answer("How are path parameters declared?", store=s, knnlm=knn, lm=lm,
                         config=rag.RagConfig(k=3, max_new_tokens=48, answer_mode="generate"))
        assert res.grounded and res.answer.strip()
        assert any(c.cited and c.source.endswith("routing.md") for c in res.citations), res.to_dict()
        off = rag.answer("What is the boiling point of liquid nitrogen on Mars?", store=s, knnlm=knn, lm=lm)
        assert not off.grounded


def test_echo_is_cut_while_streaming_and_after():
    from lm.rag.citations import EchoCutStream, cut_echo

    raw = "Braces declare them [1].\nMore detail here.\n\nQuestion: How are they declared?\n[2] a.md (lines 1-3)\nx"
    out: list[str] = []
    s = EchoCutStream(out.append)
    for i in range(0, len(raw), 3):  # arbitrary token boundaries
        s(raw[i:i + 3])
    s.close()
    assert "".join(out) == cut_echo(raw) and cut_echo(raw) == "Braces declare them [1].\nMore detail here."
    first: list[str] = []
    s = EchoCutStream(first.append)
    s(" Braces")  # the first piece is shown at once, not when its line ends
    assert first == [" Braces"]
    s(" declare them.\nUs")  # "Us" may become "User:": held
    assert "".join(first) == " Braces declare them."
    s("ing [1].\nSources: a.md")
    s.close()
    assert "".join(first) == " Braces declare them.\nUsing [1]."
    assert cut_echo("Question: first line is kept") == "Question: first line is kept"


def test_overlap_fallback_marks_the_source_holding_most_words():
    from lm.rag.citations import add_markers, overlap_best

    sources = ["deploy behind a proxy", "Path parameters are declared with curly braces in the route"]
    assert overlap_best("Path parameters take curly braces in the route.", sources) == (1, 5 / 6)
    assert overlap_best("Bananas are yellow today.", sources) is None
    text = "Path parameters use curly braces in the route. Bananas are yellow."
    assert add_markers(text, [(0, 46, 2)]) == "Path parameters use curly braces in the route [2]. Bananas are yellow."


def test_refusal_does_not_load_the_lm(store):
    def loader():
        raise AssertionError("loaded the LM for a refusal")

    res = rag.answer("quantum zebra migration", store=store, knnlm=loader)
    assert not res.grounded and res.model == "not loaded"
