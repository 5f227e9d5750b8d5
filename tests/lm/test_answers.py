"""Extractive answers, abstention and the answer-mode decision (issue 12)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm.rag import abstain, modes
from lm.rag import answer as rag
from lm.rag.spans import Span, answer_type, phrases, sentences, snap, trim, words
from tests.support.guards import MustNotLoad

DOCS = {
    "rivers.md": "# Rivers\n\nThe Rhine rises in the Swiss Alps.\nThe Rhine is 1,230 km long and empties into the North Sea "
                 "near Rotterdam.\n\nThe Danube flows to the Black Sea.\n",
    "kitchen.md": "# Recipes\n\nOur team lunch is on Fridays. Bring a plate.\n",
    "server.md": "# Server\n\nStart the HTTP transport with the serve command and the --transport http flag. "
                 "The default port is 8000.\n",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from retrieval.store.docstore import DocStore

    root = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (root / name).write_text(text)
    s = DocStore.open(tmp_path_factory.mktemp("store") / "s", embedder="hash-64")
    s.index_paths([str(root)])
    yield s
    s.close()


def test_sentences_and_phrases_keep_exact_offsets():
    text = "The Rhine (German: Rhein) is 1,230 km long. It ends in the North Sea!\n\n- a list item\nDr. No was here."
    ss = sentences(text)
    assert [s.text for s in ss][:2] == ["The Rhine (German: Rhein) is 1,230 km long.", "It ends in the North Sea!"]
    for s in ss:
        assert text[s.start:s.end] == s.text
        for p in phrases(text, s):
            assert text[p.start:p.end] == p.text
            assert "," not in p.text.replace("1,230", "")  # phrases never cross a clause boundary
    assert "1,230" in [w.text for w in words(text)]


def test_trim_snap_and_answer_types():
    text = "The largest city on the Rhine is Cologne, Germany."
    s = Span(0, len(text), text)
    q = {"largest", "city", "rhine"}
    end = text.index("Cologne") + len("Cologne")
    assert trim(text, Span(0, end, text[:end]), q).text == "Cologne"
    got = snap(text, s, "It is Cologne in Germany")
    assert got is not None and text[got.start:got.end] == got.text and "Cologne" in got.text
    assert snap(text, s, "zzz") is None
    assert [answer_type(x) for x in ("When was it built?", "How many people live there?", "Who wrote it?",
                                     "Where does it end?", "What is it?", "How do I run it?")] == [
        "date", "number", "person", "place", "thing", "explain"]


def test_extractive_answer_is_a_span_of_the_cited_chunk(store):
    res = rag.answer("How long is the Rhine?", store=store, knnlm=MustNotLoad(), config=rag.RagConfig(min_score=0.0))
    assert res.mode == "extractive" and res.grounded and res.model == "not loaded"
    sp = res.answer_span
    cited = [c for c in res.citations if c.cited]
    assert len(cited) == 1 and cited[0].chunk_id == sp.chunk_id
    chunk = store.get([sp.chunk_id])[0]
    assert chunk.text[sp.chunk_start:sp.chunk_end] == res.answer  # offsets into the chunk reproduce it
    source = Path(sp.source).read_text()
    assert source[sp.start_char:sp.end_char] == res.answer  # ... and into the file
    assert source.count("\n", 0, sp.start_char) + 1 == sp.start_line == cited[0].start_line
    assert "1,230" in res.answer and res.answer in sp.sentence
    assert "answer copied from line" in rag.format_sources(res)


def test_off_topic_question_abstains_without_loading_the_lm(store):
    """A heading ("Recipes") shares a word with the question: retrieval finds it, abstention refuses."""
    pieces: list[str] = []
    res = rag.answer("What is the best recipe for sourdough bread?", store=store, knnlm=MustNotLoad(),
                     config=rag.RagConfig(min_score=0.0), on_token=pieces.append)
    assert res.grounded is False and res.mode == "abstain" and res.answer_span is None
    assert res.confidence is not None and res.confidence < abstain.THRESHOLD
    assert "".join(pieces) == res.answer and "not guess" in res.answer


def test_how_to_questions_get_the_whole_sentence(store):
    res = rag.answer("How do I start the HTTP transport?", store=store, knnlm=MustNotLoad(),
                     config=rag.RagConfig(min_score=0.0, abstain_threshold=0.0))
    assert res.mode == "extractive" and res.answer == res.answer_span.sentence
    assert res.answer.startswith("Start the HTTP transport")


def test_abstention_score_orders_evidence():
    strong = abstain.AbstainFeatures(0.9, 0.9, 0.7, 0.6, 0.2, 1.0, 1.0)
    weak = abstain.AbstainFeatures(0.1, 0.2, 0.2, 0.15, 1.0, 0.0, 0.0)
    assert abstain.p_answerable(strong) > abstain.THRESHOLD > abstain.p_answerable(weak)


def test_threshold_zero_never_abstains(store):
    res = rag.answer("What is the best recipe for sourdough bread?", store=store, knnlm=MustNotLoad(),
                     config=rag.RagConfig(min_score=0.0, abstain_threshold=0.0))
    assert res.mode == "extractive" and res.grounded


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


def test_lm_span_scores_match_a_full_forward(tmp_path):
    """The KV-cache batch scorer equals log p computed from one plain forward per candidate."""
    import numpy as np
    import torch

    from lm.models import load_lm
    from lm.rag import lm_scorer
    from tests.support.tiny_lm import make_tiny_lm

    lm = load_lm(str(make_tiny_lm(tmp_path / "lm", vocab="word")))
    tok = lm.tokenizer
    sent, q, cands = "The value is passed to the function as an argument .", "What is passed ?", ["The value", "function", "an argument ."]

    def full_forward(question: str | None) -> np.ndarray:  # (3,) log p(candidate + end | prompt), one forward each
        prompt = lm_scorer._prompt_ids(tok, sent, question)[0].tolist()
        out = []
        for c in cands:
            ids = prompt + tok(c, add_special_tokens=False)["input_ids"] + [lm_scorer._end_id(tok)]
            with torch.inference_mode():
                lp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)  # (T, V)
            out.append(sum(float(lp[i - 1, ids[i]]) for i in range(len(prompt), len(ids))))
        return np.asarray(out)

    with_q, without_q = full_forward(q), full_forward(None)
    assert np.all(with_q < 0) and not np.allclose(with_q, without_q)  # the question changes the scores
    np.testing.assert_allclose(lm_scorer.span_log_probs(lm, sent, q, cands), with_q, atol=1e-3)
    np.testing.assert_allclose(lm_scorer.span_log_probs(lm, sent, None, cands), without_q, atol=1e-3)
    # PMI: what the question adds over the sentence alone; without pmi the plain log p
    np.testing.assert_allclose(lm_scorer.score_spans(lm, sent, q, cands), with_q - without_q, atol=2e-3)
    np.testing.assert_allclose(lm_scorer.score_spans(lm, sent, q, cands, pmi=False), with_q, atol=1e-3)
