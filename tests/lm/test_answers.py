"""Extractive answers (a passage, its phrase), abstention, the fitted parameters and the answer mode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm.rag import answer as rag
from lm.rag import modes, params
from retrieval.errors import CorruptStoreError
from tests.support.guards import MustNotLoad

DOCS = {
    "rivers.md": "# Rivers\n\n## Rhine\n\nThe Rhine rises in the Swiss Alps.\nThe Rhine is 1,230 km long and empties into "
                 "the North Sea near Rotterdam.\n\nThe Danube flows to the Black Sea.\n",
    "kitchen.md": "# Recipes\n\nOur team lunch is on Fridays. Bring a plate.\n",
    "server.md": "# Server\n\n| option | meaning |\n|---|---|\n| `--port N` | the HTTP port (default 8000) |\n"
                 "| `--host H` | the bind address (default 127.0.0.1) |\n\nStart the HTTP transport with the serve "
                 "command and the --transport http flag.\n",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from retrieval.store.docstore import DocStore

    root = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (root / name).write_text(text)
    s = DocStore.open(tmp_path_factory.mktemp("store") / "s", embedder="hash-64")
    s.index_paths([str(root)])
    s.root = root  # type: ignore[attr-defined]
    yield s
    s.close()


def _check_exact(store, res) -> None:
    sp = res.answer_span
    chunk = store.get([sp.chunk_id])[0]
    assert chunk.text[sp.chunk_start:sp.chunk_end] == sp.text == res.answer
    file_text = Path(sp.source).read_text()
    assert file_text[sp.start_char:sp.end_char] == sp.text
    assert "\n".join(file_text.split("\n")[sp.start_line - 1:sp.end_line]).find(sp.text) >= 0
    assert len(sp.text.split()) <= params.default().max_words
    if res.phrase is not None:
        ph = res.phrase
        assert chunk.text[ph.chunk_start:ph.chunk_end] == ph.text == file_text[ph.start_char:ph.end_char]
        assert sp.chunk_start <= ph.chunk_start and ph.chunk_end <= sp.chunk_end
    cited = [c for c in res.citations if c.cited]
    assert len(cited) == 1 and (cited[0].start_char, cited[0].end_char) == (sp.start_char, sp.end_char)


@pytest.mark.parametrize("question, want", [
    ("How long is the Rhine?", "1,230 km"),
    ("Which option sets the HTTP port?", "--port N"),
])
def test_the_answer_is_an_exact_passage_of_the_cited_chunk(store, question, want):
    res = rag.answer(question, store=store, knnlm=MustNotLoad(), config=rag.RagConfig(abstain_threshold=0.0))
    assert res.mode == "extractive" and res.grounded and want in res.answer, res.to_dict()
    _check_exact(store, res)
    d = res.to_dict()
    assert {"answer", "grounded", "citations", "answer_span", "phrase", "confidence"} <= set(d)


def test_a_table_row_comes_with_its_header_and_heading(store):
    res = rag.answer("Which option sets the HTTP port?", store=store, knnlm=MustNotLoad(),
                     config=rag.RagConfig(abstain_threshold=0.0))
    sp = res.answer_span
    assert sp.table_header is not None and sp.table_header.text == "| option | meaning |"
    assert Path(sp.source).read_text()[sp.table_header.start_char:sp.table_header.end_char] == "| option | meaning |"
    assert sp.heading == "Server"
    assert rag.marked_answer(res).startswith("[Server]\n| option | meaning |\n")


@pytest.mark.parametrize("question", [
    "How do I create a database migration in Django?",
    "Which port does gunicorn listen on by default?",  # near-topic: "port" and "default" are in server.md
])
def test_an_off_topic_question_abstains_without_loading_the_lm(store, question):
    res = rag.answer(question, store=store, knnlm=MustNotLoad())
    assert res.grounded is False and res.mode == "abstain" and res.answer_span is None and res.phrase is None


def test_threshold_zero_never_abstains(store):
    res = rag.answer("What is the best recipe for sourdough bread?", store=store, knnlm=MustNotLoad(),
                     config=rag.RagConfig(min_score=0.0, abstain_threshold=0.0))
    assert res.mode == "extractive" and res.grounded


def test_the_fitted_parameters_load_and_record_their_fit():
    p = params.default()
    assert p.fit["held_out"] and p.fit["date"] and p.fit["data"]["rows_sha256"]
    assert 0.0 <= p.abstain_threshold <= 1.0 and p.max_words == 80


def test_a_missing_or_tampered_parameter_file_is_refused(tmp_path):
    with pytest.raises(CorruptStoreError, match="missing"):
        params.load(tmp_path / "nope.json")
    raw = json.loads(params.PATH.read_text())
    raw["model"]["tau"] = 0.01
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(CorruptStoreError, match="sha256"):
        params.load(bad)
    raw = json.loads(params.PATH.read_text())
    raw["model"]["unit_features"] = raw["model"]["unit_features"][:-1]
    body = {k: raw[k] for k in ("format", "model", "fit")}
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**body, "sha256": params.checksum(body)}))
    with pytest.raises(CorruptStoreError, match="refit"):
        params.load(stale)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="not a fitted"):
        params.load(tmp_path / "junk.json")


def test_auto_mode_sizes_the_model_without_loading_it(tmp_path):
    small = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
    big = {"hidden_size": 2048, "num_hidden_layers": 24, "intermediate_size": 8192, "vocab_size": 50000}
    assert 1.2e8 < modes.params_from_config(small) < 1.6e8  # SmolLM2-135M
    for name, cfg in (("small", small), ("big", big)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    assert modes.resolve("auto", str(tmp_path / "small"), MustNotLoad()) == "extractive"
    assert modes.resolve("auto", str(tmp_path / "big"), MustNotLoad()) == "generate"
    assert modes.resolve("auto", None, MustNotLoad()) == "extractive"  # the bundled 135M
    assert modes.resolve("generate", None, None) == "generate" and modes.resolve("extractive", str(tmp_path / "big"), None) == "extractive"
    with pytest.raises(Exception, match="answer mode"):
        rag.RagConfig(answer_mode="poetry")


@pytest.mark.slow  # waits on real time (watchers, queued writes, generation): 2-4 s alone
def test_generation_stops_on_a_repeated_sentence(tmp_path):
    import torch

    from lm.generate import repeat_stopper
    from lm.models import load_lm
    from tests.support.tiny_lm import make_tiny_lm

    tok = load_lm(str(make_tiny_lm(tmp_path / "lm", vocab="word"))).tokenizer
    prompt = tok("Run the server", add_special_tokens=False)["input_ids"]
    once = tok("the value is passed to the function . Use several worker processes .", add_special_tokens=False)["input_ids"]
    again = tok("the value is passed to the function . Use", add_special_tokens=False)["input_ids"]
    stop = repeat_stopper(tok, len(prompt))
    assert not bool(stop(torch.tensor([prompt + once]), None)[0])
    assert bool(stop(torch.tensor([prompt + once + again]), None)[0])
