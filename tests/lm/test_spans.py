"""The extractive phrase candidates and their features (lm.rag.spans, lm.rag.extract)."""
from __future__ import annotations

import re

import numpy as np

from lm.rag.evidence import Evidence, Sentence
from lm.rag.extract import MASK, Candidate, best_span, candidate_table, masked_cosines
from lm.rag.spans import FEATURES, Span, answer_type, candidates, phrase_vector, sentence_words, words
from retrieval.types import Hit

TEXT = "Intro line.\nThe largest city on the Rhine is Cologne, and the longest bridge was built in 1939 by Karl Otto."
Q = "What is the largest city on the Rhine?"


def _weights(terms: dict[str, float]):
    return lambda w: min((terms.get(t, 0.0) for t in re.findall(r"\w+", w.lower())), default=0.0)


def _sentence(text: str = TEXT) -> Span:
    s = text.index("The largest")
    return Span(s, len(text), text[s:])


def _evidence(question: str, weights: dict[str, float], text: str = TEXT) -> Evidence:
    sent = Sentence(0, _sentence(text), 1.0, 1.0, 0.5, 1.0)
    return Evidence(question, [Hit("0", 1.0, {"dense": 1.0}, text, "t.md", 0, len(text), 1, 1, "")], [sent], list(weights), 0.0, weights,
                    lambda w: re.findall(r"\w+", w.lower()))


def test_candidates_never_start_or_end_with_stop_or_question_words():
    sw = sentence_words(_sentence(), _weights({"largest": 1.0, "city": 0.8, "rhine": 0.2}), 2.0)
    got = {TEXT[sw.words[i].start:sw.words[j].end] for i, j in candidates(sw)}
    assert "Cologne" in got and "1939" in got and "Karl Otto" in got
    assert not any(g.split()[0].lower() in ("the", "is", "by", "largest", "rhine") for g in got)
    assert not any(g.split()[-1].lower() in ("the", "is", "on", "city", "rhine") for g in got)
    assert "Cologne, and" not in got and not any("," in g for g in got)  # a clause boundary is never crossed
    for i, j in candidates(sw):  # offsets reproduce the text
        assert TEXT[sw.words[i].start:sw.words[j].end].startswith(sw.words[i].text)


def test_a_compound_is_a_question_word_only_when_all_its_parts_are():
    ev = _evidence("Which region is on the Rhine?", {"region": 1.0, "rhine": 0.3})
    w = ev.word_weight()
    assert w("Rhine") == 0.3 and w("Rhine-Ruhr") == 0.0 and w("Cologne") == 0.0


def test_phrase_features_follow_the_answer_type_and_the_question_words():
    sw = sentence_words(_sentence(), _weights({"bridge": 1.0, "built": 0.9}), 1.9)
    idx = {TEXT[sw.words[i].start:sw.words[j].end]: (i, j) for i, j in candidates(sw)}
    f = dict(zip(FEATURES, phrase_vector(sw, *idx["1939"], sw.words[0].start, "date")))
    g = dict(zip(FEATURES, phrase_vector(sw, *idx["Cologne"], sw.words[0].start, "date")))
    p = dict(zip(FEATURES, phrase_vector(sw, *idx["Karl Otto"], sw.words[0].start, "person")))
    assert f["year_date"] == 1.0 and g["year_date"] == 0.0 and g["name_date"] == 1.0
    assert p["name_person"] == 1.0 and p["prev_by_person"] == 1.0 and p["len2"] == 1.0
    assert f["near_left"] > g["near_left"] and f["window"] > g["window"]  # 1939 is next to "built"
    assert f["prev_prep"] == 1.0 and f["clause_end"] == 0.0 and p["clause_end"] == 1.0


def test_answer_types_of_measures_and_places():
    assert answer_type("What is the height of the section that turns north?") == "number"
    assert answer_type("Which country does the Rhine encounter first?") == "place"
    assert answer_type("The Rhine forms the border between Austria and what other country?") == "place"
    assert answer_type("What is the largest port in Europe called?") == "thing"


def test_numbers_with_units_stay_one_word():
    assert [w.text for w in words("about 2,290 m3/s at 3.5 km/h")] == ["about", "2,290", "m3/s", "at", "3.5", "km/h"]


def _bag(texts: list[str]) -> np.ndarray:
    """A bag-of-words embedder: unit rows over a small hashed vocabulary."""
    out = np.zeros((len(texts), 64))
    for r, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[r, sum(map(ord, w)) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_masking_the_answer_keeps_the_sentence_closest_to_the_question():
    """Masking a word the question lacks (the answer) leaves more of the question's words than masking
    one it has; the masked text is the sentence with exactly the candidate replaced."""
    ev = _evidence(Q, {"largest": 1.0, "city": 0.8, "rhine": 0.2})
    sent = ev.sentences[0]
    cands = [Candidate(sent, Span(i, i + len(w), w), []) for w in ("Cologne", "largest") for i in [TEXT.index(w)]]
    seen: list[str] = []
    cos = masked_cosines(ev, cands, lambda texts: seen.extend(texts) or _bag(texts))
    assert cos[0] > cos[1]
    assert seen[-2] == sent.span.text.replace("Cologne", MASK) and seen[-1] == sent.span.text.replace("largest", MASK, 1)


def test_best_span_is_a_copied_span_of_its_chunk():
    for q, w in ((Q, {"largest": 1.0, "city": 0.8, "rhine": 0.2}), ("When was the longest bridge built?", {"bridge": 1.0, "built": 0.9})):
        ev = _evidence(q, w)
        for embed in (None, _bag):
            ex = best_span(ev, embed)
            assert ex is not None and TEXT[ex.span.start:ex.span.end] == ex.span.text
            assert ex.span.start >= ex.sentence.span.start and ex.span.end <= ex.sentence.span.end
        for c in candidate_table(ev):
            assert TEXT[c.span.start:c.span.end] == c.span.text
    ex = best_span(_evidence("When was the longest bridge built?", {"bridge": 1.0, "built": 0.9}))
    assert ex is not None and ex.span.text.startswith("1939") and ex.type_match == 1.0
    ex = best_span(_evidence(Q, {"largest": 1.0, "city": 0.8, "rhine": 0.2}))
    assert ex is not None and ex.span.text == "Cologne" and ex.type_match == 0.0
