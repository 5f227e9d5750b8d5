"""Preprocessing: whitespace, quality filter, exact and near-duplicate removal, and the report."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import InvalidInputError
from retrieval.ingest.preprocess import (
    NearDupFilter,
    PreprocessReport,
    blank_whitespace,
    content_hash,
    index_body,
    is_quality_text,
    normalize_whitespace,
    optimal_bands,
    preprocess_chunks,
)
from retrieval.types import Chunk


def test_normalize_whitespace():
    assert normalize_whitespace("  a\tb\r\n\r\nc\u00a0d\u3000e  ") == "a b c d e"
    assert normalize_whitespace("\n\t ") == ""


@given(st.text())
def test_normalize_idempotent_and_blanking_agree(text):
    once = normalize_whitespace(text)
    assert normalize_whitespace(once) == once
    assert " " * 2 not in once and once == once.strip()
    spaced = blank_whitespace(text)
    assert len(spaced) == len(text) and normalize_whitespace(spaced) == once


@pytest.mark.parametrize(
    "text",
    [
        "Install the package with pip.",
        "def f(x): return {'a': [1, 2]}",
        "日本語のテキストです",
        "Résumé naïve café",
        "SELECT name FROM users WHERE id = 1;",
    ],
)
def test_quality_keeps_real_text(text):
    assert is_quality_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "-------------",
        "| --- | --- | --- |",
        "1. 2. 3. 4.",
        "Introduction",
        "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQgZW5jb2RlZCBkYXRhIGJsb2I9PQ== aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQgZW5jb2RlZCBkYXRh",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ab",
        "!!! ??? ... ;;; ::: ### @@@ ok no",
        "* * * * * * *",
    ],
)
def test_quality_drops_junk(text):
    assert not is_quality_text(text)


def test_content_hash_and_index_body():
    assert content_hash("abc") == content_hash("abc") != content_hash("abd")
    assert len(content_hash("x")) == 64
    assert index_body("Guide > Install\npip install knnrag") == "pip install knnrag"
    assert index_body("no prefix here") == "no prefix here"


def _words(n, seed):
    rng = random.Random(seed)
    vocab = ["".join(chr(97 + (i // 26**k) % 26) for k in range(3)) + "word" for i in range(2000)]
    return [rng.choice(vocab) for _ in range(n)]


def test_near_duplicates_found_and_different_texts_kept():
    base = _words(200, 1)
    f = NearDupFilter()
    assert not f.is_near_duplicate(" ".join(base))
    assert f.is_near_duplicate(" ".join(base))  # exact copy
    edited = list(base)
    edited[100] = "changed"
    assert f.is_near_duplicate(" ".join(edited).upper())  # one word changed, case ignored
    assert not f.is_near_duplicate(" ".join(_words(200, 2)))
    half = base[:100] + _words(100, 3)
    assert not f.is_near_duplicate(" ".join(half))
    assert len(f) == 3
    assert not f.is_near_duplicate("") and not f.is_near_duplicate("  ...  ")


def test_near_dup_similarity_estimate_is_close():
    f = NearDupFilter(num_perm=256)
    a = _words(400, 5)
    b = a[:300] + _words(100, 6)
    # true Jaccard of 5-shingles
    sa = {tuple(a[i : i + 5]) for i in range(len(a) - 4)}
    sb = {tuple(b[i : i + 5]) for i in range(len(b) - 4)}
    true = len(sa & sb) / len(sa | sb)
    assert abs(f.similarity(" ".join(a), " ".join(b)) - true) < 0.1


def test_near_dup_deterministic_and_short_texts():
    texts = [" ".join(_words(30, s)) for s in range(20)] + ["a b", "a b", "a c"]
    runs = []
    for _ in range(2):
        f = NearDupFilter(threshold=0.8)
        runs.append([f.is_near_duplicate(t) for t in texts])
    assert runs[0] == runs[1]
    assert runs[0][-2] is True and runs[0][-1] is False  # texts shorter than a shingle still compare
    sig = NearDupFilter().signature("some words here to hash")
    assert sig.dtype == np.uint64 and sig.shape == (64,)


def test_near_dup_validation_and_bands():
    with pytest.raises(InvalidInputError):
        NearDupFilter(threshold=0)
    with pytest.raises(InvalidInputError):
        NearDupFilter(num_perm=1)
    b, r = optimal_bands(0.9, 64)
    assert b * r <= 64 and 1 - (1 - 0.95**r) ** b > 0.9  # recall at high similarity


def _chunk(index_text, text=None):
    return Chunk("s", text or index_text, 0, len(text or index_text), 1, 1, "", "text", index_text)


def test_preprocess_chunks_counts_each_step():
    long_text = " ".join(_words(120, 9))
    near = long_text.replace(long_text.split()[60], "different", 1)
    chunks = [
        _chunk("Heading\n"),  # empty body
        _chunk("-----------"),  # low quality
        _chunk("Real words in a sentence."),
        _chunk("Real words in a sentence."),  # exact duplicate
        _chunk(long_text),
        _chunk(near),  # near duplicate
        _chunk("Heading\n-------", "-------"),  # junk body rescued by nothing
    ]
    report = PreprocessReport()
    seen: set[str] = set()
    kept = preprocess_chunks(chunks, report, seen_hashes=seen, near_dup=NearDupFilter())
    assert [c.index_text for c in kept] == ["Real words in a sentence.", long_text]
    assert report.to_dict() == {"empty": 1, "low_quality": 2, "exact_duplicate": 1, "near_duplicate": 1}
    assert report.total == 5 and len(seen) == 2
    # the seen set carries across calls (a whole collection deduplicates)
    again = preprocess_chunks([_chunk("Real words in a sentence.")], report, seen_hashes=seen)
    assert again == [] and report.exact_duplicates_dropped == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=80), max_size=20))
def test_preprocess_never_keeps_duplicates(texts):
    report = PreprocessReport()
    kept = preprocess_chunks([_chunk(normalize_whitespace(t) or "x") for t in texts], report, quality=False)
    hashes = [content_hash(c.index_text) for c in kept]
    assert len(hashes) == len(set(hashes))
    assert len(kept) + report.total == len(texts)
