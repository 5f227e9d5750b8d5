"""The pieces answers are cut from (lm.rag.spans) and the phrase candidates (lm.rag.reader)."""
from __future__ import annotations

import re

from lm.rag import reader
from lm.rag.spans import Span, code_spans, units, words

DOC = ("Intro line about the tool.\n\n"
       "| option | meaning |\n|---|---|\n| `--tag T` | tag every chunk of these files |\n"
       "| `--near-dup T` | near-duplicate threshold (default 0.9) |\n\n"
       "- first item of a list\n- second item, with `code here` inside\n\n"
       "Heading\n=======\n\nThe largest city on the Rhine is Cologne. It was built in 1939 by Karl Otto.")


def test_units_reproduce_their_text_and_rows_keep_their_header():
    us = units(DOC)
    for u in us:
        assert DOC[u.start:u.end] == u.text and u.text == u.text.strip()
    texts = [u.text for u in us]
    assert "| option | meaning |" not in texts and "Heading\n=======" not in " ".join(texts)
    rows = [u for u in us if u.text.startswith("| `--")]
    assert len(rows) == 2 and all(r.header is not None and r.header.text == "| option | meaning |" for r in rows)
    assert DOC[rows[0].header.start:rows[0].header.end] == "| option | meaning |"
    assert "- first item of a list" in texts and "- second item, with `code here` inside" in texts
    assert all(u.header is None for u in us if not u.text.startswith("|"))
    assert "The largest city on the Rhine is Cologne." in texts


def test_words_and_code_spans_have_offsets():
    item = next(u for u in units(DOC) if "code here" in u.text)
    (c,) = code_spans(item.span)
    assert DOC[c.start:c.end] == c.text == "code here"
    for w in words(DOC):
        assert DOC[w.start:w.end] == w.text
    assert [w.text for w in words("It cost 1,230 km in 3.5 days")][2:3] == ["1,230"]


def _tok(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower()) if w not in reader.STOP]


def test_phrase_candidates_avoid_stop_and_question_words_and_keep_code_whole():
    u = next(x for x in units(DOC) if x.text.startswith("The largest"))
    cands = reader.candidates(u.span, {"largest", "city", "rhine"}, _tok, reader.wh_word("What is the largest city?"))
    got = {c.span.text for c in cands}
    assert "Cologne" in got
    assert not any(g.split()[0].lower() in ("the", "is", "largest", "rhine") for g in got)
    for c in cands:
        assert DOC[c.span.start:c.span.end] == c.span.text and len(c.features) == len(reader.PHRASE_FEATURES)
    row = next(x for x in units(DOC) if "--tag" in x.text)
    texts = {c.span.text for c in reader.candidates(row.span, {"tag"}, _tok, "which")}
    assert "--tag T" in texts  # inline code is one candidate


def test_wh_word_and_its_shape_features():
    assert reader.wh_word("When was it built?") == "when" and reader.wh_word("Name the city") == "other"
    u = Span(0, 30, "It was built in 1939 by Otto.")
    c = {x.span.text: dict(zip(reader.PHRASE_FEATURES, x.features)) for x in reader.candidates(u, {"built"}, _tok, "when")}
    assert c["1939"]["when_number"] == 1.0 and c["1939"]["who_number"] == 0.0 and c["Otto"]["when_capital"] == 1.0
    assert c["1939"]["near_left"] == 0.5  # "built" is two words to the left
