"""The stopword lists a BM25 collection may be built with, by name (the name is what its manifest
records; the query path never imports bm25s, whose lists these are).

"en" is bm25s's default (Lucene's 33 words). "en_plus" is bm25s's STOPWORDS_EN_PLUS (NLTK's 179
English words: also pronouns, auxiliaries and question words). benchmarks/bench_bm25_variants.py:
at the same k1/b/title weight and tokens, en_plus against en is SciFact train 0.7035 vs 0.7032,
SciFact test 0.6909 vs 0.6862, CACM 0.5235 vs 0.5198 nDCG@10 (no stopwords at all: CACM 0.5047;
sklearn's 318 words: 0.5213), so it is the default for new collections; a collection keeps the
list it was built with.
"""
from __future__ import annotations

STOPWORDS_EN = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with"
).split()

STOPWORDS_EN_PLUS = """
    a about above after again against ain all am an and any are aren aren't as at be because been
    before being below between both but by can couldn couldn't d did didn didn't do does doesn
    doesn't doing don don't down during each few for from further had hadn hadn't has hasn hasn't
    have haven haven't having he her here hers herself him himself his how i if in into is isn isn't
    it it's its itself just ll m ma me mightn mightn't more most mustn mustn't my myself needn
    needn't no nor not now o of off on once only or other our ours ourselves out over own re s same
    shan shan't she she's should should've shouldn shouldn't so some such t than that that'll the
    their theirs them themselves then there these they this those through to too under until up ve
    very was wasn wasn't we were weren weren't what when where which while who whom why will with
    won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves
""".split()

LISTS: dict[str, tuple[str, ...]] = {"en": tuple(STOPWORDS_EN), "en_plus": tuple(STOPWORDS_EN_PLUS), "": ()}


def name_of(words: list[str] | tuple[str, ...]) -> str | None:
    """The name of a saved list (order and duplicates ignored), None if it is none of ours."""
    want = sorted(set(words))
    return next((n for n, ws in LISTS.items() if sorted(set(ws)) == want), None)
