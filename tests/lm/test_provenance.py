"""Citations from kNN provenance, the answer-only n-gram ban and the LM-free abstention (issue 12)."""
from __future__ import annotations

import pytest

from lm.rag import answer as rag
from lm.rag import provenance as prov
from lm.rag.records import ChunkRef
from tests.support.docs import write_docs
from tests.support.tiny_lm import make_tiny_lm

# "Zorblat" stays out of the vocabulary on purpose: it reads as <unk> in the datastore, like the
# prompt's last word ("assistant"), so the kNN walk of this random LM enters the planted chunk there
PLANTED = "# Bridges\n\nThe Zorblat bridge spans Quenta gorge since 1911 carrying trams daily.\n"
VOCAB = "Bridges bridge spans Quenta gorge since 1911 carrying trams daily"
QUESTION = "When did the Zorblat bridge open?"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lm.knn_index import datastore_dir, sync
    from lm.knnlm import KNNLM
    from lm.models import load_lm
    from retrieval.store.docstore import DocStore

    root = tmp_path_factory.mktemp("prov")
    docs = write_docs(root / "docs")
    (docs / "bridges.md").write_text(PLANTED)
    lm_dir = make_tiny_lm(root / "lm", vocab="word", extra_words=VOCAB)
    lm = load_lm(str(lm_dir))
    s = DocStore.open(root / "store", embedder="hash-64")
    s.index_paths([str(docs)])
    sync(s, "default", lm, datastore_dir(root / "store", "default"))
    yield s, KNNLM.load(lm, datastore_dir(root / "store", "default")), lm, lm_dir
    s.close()


def _cfg(**kw):
    return rag.RagConfig(k=3, max_new_tokens=16, min_score=0.0, abstain_threshold=0.0, answer_mode="generate", **kw)


def test_provenance_points_to_the_chunk_of_a_planted_fact(setup):
    store, knn, _lm, _dir = setup
    planted = next(h for h in store.search(QUESTION, k=5) if h.source.endswith("bridges.md"))
    res = rag.answer(QUESTION, store=store, knnlm=knn, config=_cfg())
    span = next(sp for sp in res.spans if "1911" in sp.text)
    assert span.basis == "provenance" and span.provenance_chunk == planted.id
    top = span.chunks[0]
    assert top.chunk_id == planted.id and top.source.endswith("bridges.md") and top.weight >= prov.MIN_WEIGHT
    assert (top.start_line, top.end_line) == (planted.start_line, planted.end_line)
    assert res.answer[span.start:span.end] == span.text and f"[{top.n}]" in span.text
    cite = next(c for c in res.citations if c.n == top.n)
    assert cite.cited and cite.basis == "provenance" and res.attributed and res.used_knn
    assert "kNN provenance" in res.note and "kNN provenance" in rag.format_sources(res)
    assert span.agree is (span.overlap_chunk == planted.id) and res.agreement is not None


def test_token_shares_follow_the_emitted_tokens(setup):
    """Each token's chunk weights are the neighbours' shares of p_mix of *that* token, in [0, 1]."""
    from lm.generate import ProvenanceLog, generate

    store, knn, lm, _dir = setup
    plog = ProvenanceLog()
    text = generate(knn, "Quenta gorge since", knn._cfg(lambda_=0.5), max_new_tokens=6, chat=False, provenance=plog)
    assert len(plog.steps) == len(plog.emitted) == 6 and text
    weights = prov.token_chunk_weights(plog, knn.store)
    assert all(0.0 <= sum(w.values()) <= 1.0 + 1e-5 for w in weights)
    for st, y, w in zip(plog.steps, plog.emitted, weights):
        assert st is not None and (w != {}) == bool(((st.values[0] == y) & (st.entries[0] >= 0)).any())
    offsets = prov.token_offsets(lm.tokenizer, plog.emitted)
    assert offsets[-1][1] == len(text) and all(a <= b for a, b in offsets)


def test_without_a_datastore_overlap_is_the_labelled_fallback():
    text = "The bridge spans the gorge. Trams cross it daily."
    sources = [("a", "routing words only here"), ("b", "Trams cross the old bridge daily")]
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    spans = prov.attribute_spans(text, [], None, sources)
    assert [sp.basis for sp in spans] == ["none", "overlap"] and spans[1].chunks[0].chunk_id == "b"
    # with weights: the first sentence from chunk "a" (provenance), the second too weak -> overlap
    weights = [{"a": 0.4} for _ in words[:5]] + [{"b": 0.01} for _ in words[5:]]
    spans = prov.attribute_spans(text, words, weights, sources)
    assert [sp.basis for sp in spans] == ["provenance", "overlap"]
    assert spans[0].chunks == [ChunkRef("a", 0.4)] and spans[1].provenance_weight == 0.01
    assert spans[1].agree is None and prov.agreement(spans) is None
    marks, extra, basis = prov.markers(spans, ["b"], {"a"})
    assert extra == ["a"] and basis == {2: "provenance", 1: "overlap"}
    out = prov.apply_markers(text, spans, marks)
    assert out == "The bridge spans the gorge [2]. Trams cross it daily [1]."
    assert [sp.text for sp in spans] == ["The bridge spans the gorge [2].", "Trams cross it daily [1]."]


def test_no_repeat_bans_repeats_in_the_answer_not_quotes_of_the_prompt():
    import torch

    from lm.generate import answer_no_repeat

    ban = answer_no_repeat(3, prompt_len=4)
    prompt = [5, 6, 7, 8]
    scores = ban(torch.tensor([prompt + [5, 6]]), torch.zeros(1, 10))  # quoting the prompt's 5 6 7 is allowed
    assert bool(torch.isfinite(scores).all())
    scores = ban(torch.tensor([prompt + [5, 6, 7, 5, 6]]), torch.zeros(1, 10))  # 5 6 7 again: banned
    assert torch.isinf(scores[0, 7]) and int(torch.isinf(scores).sum()) == 1


def test_the_ban_holds_against_the_knn_mix(setup):
    """The ban runs after the mix: kNN mass cannot bring a banned token back (lambda 0.9)."""
    from lm.generate import generate

    _store, knn, lm, _dir = setup
    tok = lm.tokenizer
    prompt = "Use several worker processes for throughput . Use several worker processes for throughput ."
    text = generate(knn, prompt, knn._cfg(lambda_=0.9), max_new_tokens=24, chat=False, no_repeat_ngram_size=2)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    grams = list(zip(ids, ids[1:]))
    assert len(ids) > 4 and len(grams) == len(set(grams))


def test_abstention_in_generate_mode_does_not_load_the_lm(setup):
    store, _knn, _lm, _dir = setup

    def must_not_load():
        raise AssertionError("the LM was loaded for an abstention")

    res = rag.answer("What is the best recipe for sourdough bread?", store=store, knnlm=must_not_load,
                     config=rag.RagConfig(answer_mode="generate", min_score=0.0))
    assert res.mode == "abstain" and not res.grounded and res.spans == []


def test_cli_ask_uses_the_collections_datastore(setup, capsys):
    import json

    from retrieval.cli.root import main

    store, _knn, _lm, lm_dir = setup
    args = ["ask", QUESTION, "--store", str(store.path), "--model", str(lm_dir), "--mode", "generate", "-k", "3",
            "--max-new-tokens", "12", "--min-score", "0", "--abstain-threshold", "0", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["used_knn"] is True and any(sp["basis"] == "provenance" for sp in out["spans"])
    assert main(args + ["--no-knn"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["used_knn"] is False and all(sp["basis"] != "provenance" for sp in out["spans"])


def test_generation_stops_at_a_prompt_echo(setup):
    """The echo is cut from the answer anyway, so generating it is wasted time: stop there."""
    import torch

    from lm.generate import repeat_stopper
    from lm.rag.citations import echoes

    assert echoes("The Aare [1].\nQuestion: and the Main?") and not echoes("The Aare [1].\nQuestions remain.")
    assert not echoes("Question: on the first line is an answer")
    tok = setup[2].tokenizer
    prompt = tok("Run the server", add_special_tokens=False)["input_ids"]
    gen = tok("Use several worker processes", add_special_tokens=False)["input_ids"]
    stop = repeat_stopper(tok, len(prompt), stop_text=lambda text: "worker" in text, repeats=False)
    assert not bool(stop(torch.tensor([prompt + gen[:2]]), None)[0])
    assert bool(stop(torch.tensor([prompt + gen]), None)[0])
