"""Filters with chroma-style operators: each operator against a Python reference over the same rows,
through DocStore.search (filters act before ranking: every matching chunk comes back with k large),
bad operators refused with the valid ones named, unknown kinds / tags / keys refused with the
collection's own, the CLI's two spellings and LangChain's `filter`."""
from __future__ import annotations

import itertools

import pytest

from retrieval.cli.filters import combine
from retrieval.errors import InvalidInputError
from retrieval.store.docstore import DocStore
from retrieval.store.filters import OPERATORS, compile_where

ROWS = [  # (text, metadata): pages as PDF chunks carry them, an owner, a date, tags, a kind
    ("alpha report intro", {"source": "a.pdf", "kind": "pdf", "page_start": 1, "page_end": 1, "owner": "ana",
                            "date": "2024-01-15", "tags": ["public"]}),
    ("alpha report methods", {"source": "a.pdf", "kind": "pdf", "page_start": 2, "page_end": 4, "owner": "ana",
                              "date": "2024-03-01T10:00:00Z", "tags": ["public", "draft"]}),
    ("alpha report results", {"source": "a.pdf", "kind": "pdf", "page_start": 5, "page_end": 5, "owner": "bo",
                              "date": "2024-06-30", "score": 0.5}),
    ("alpha notes one", {"source": "n/one.md", "kind": "markdown", "owner": "bo", "score": 2, "tags": ["draft"]}),
    ("alpha notes two", {"source": "n/two.md", "kind": "markdown", "score": 7.5, "page": 3}),
    ("alpha code", {"source": "src/x.py", "kind": "code", "language": "python", "owner": "cy", "date": "2023-12-31"}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = DocStore.open(tmp_path_factory.mktemp("filters") / "store", embedder="hash-64")
    s.add_texts([t for t, _ in ROWS], [dict(m) for _, m in ROWS], ids=[str(i) for i in range(len(ROWS))])
    yield s
    s.close()


def found(store, where) -> set[int]:
    return {int(h.id) for h in store.search("alpha", k=50, mode="bm25", filters=where)}


def pages(m):  # the reference's page range: page_start..page_end, or page
    lo = m.get("page_start", m.get("page"))
    return (lo, m.get("page_end", lo)) if lo is not None else None


def ref(pred) -> set[int]:
    return {i for i, (_, m) in enumerate(ROWS) if pred(m)}


CASES = [
    ({"owner": "ana"}, lambda m: m.get("owner") == "ana"),
    ({"owner": {"$eq": "bo"}}, lambda m: m.get("owner") == "bo"),
    ({"owner": {"$ne": "ana"}}, lambda m: m.get("owner") != "ana"),  # chunks without an owner pass
    ({"owner": {"$in": ["ana", "cy"]}}, lambda m: m.get("owner") in ("ana", "cy")),
    ({"owner": {"$nin": ["ana", "cy"]}}, lambda m: m.get("owner") not in ("ana", "cy")),
    ({"owner": ["bo", "cy"]}, lambda m: m.get("owner") in ("bo", "cy")),
    ({"score": {"$gt": 2}}, lambda m: isinstance(m.get("score"), (int, float)) and m["score"] > 2),
    ({"score": {"$gte": 2}}, lambda m: isinstance(m.get("score"), (int, float)) and m["score"] >= 2),
    ({"score": {"$lt": 2}}, lambda m: isinstance(m.get("score"), (int, float)) and m["score"] < 2),
    ({"score": {"$lte": 2, "$gt": 0.5}}, lambda m: isinstance(m.get("score"), (int, float)) and 0.5 < m["score"] <= 2),
    ({"date": {"$gte": "2024-03-01"}}, lambda m: m.get("date", "") >= "2024-03-01"),
    ({"date": {"$lt": "2024-03-01T12:00:00+00:00"}}, lambda m: "date" in m and m["date"][:10] <= "2024-03-01"),
    ({"date": {"$gt": "2024-01-15T00:00:00Z", "$lte": "2024-06-30"}},
     lambda m: "date" in m and "2024-01-15" < m["date"][:10] <= "2024-06-30"),
    ({"page": 3}, lambda m: pages(m) is not None and pages(m)[0] <= 3 <= pages(m)[1]),
    ({"page": {"$gte": 3}}, lambda m: pages(m) is not None and pages(m)[1] >= 3),
    ({"page": {"$lt": 2}}, lambda m: pages(m) is not None and pages(m)[0] < 2),
    ({"page": {"$ne": 3}}, lambda m: pages(m) is None or not pages(m)[0] <= 3 <= pages(m)[1]),
    ({"page": {"$in": [1, 5]}}, lambda m: pages(m) is not None and any(pages(m)[0] <= p <= pages(m)[1] for p in (1, 5))),
    ({"kind": "pdf"}, lambda m: m["kind"] == "pdf"),
    ({"kind": {"$nin": ["pdf", "code"]}}, lambda m: m["kind"] not in ("pdf", "code")),
    ({"source": "n/*"}, lambda m: m["source"].startswith("n/")),
    ({"source": {"$ne": "*.pdf"}}, lambda m: not m["source"].endswith(".pdf")),
    ({"source": {"$in": ["src", "n/one.md"]}}, lambda m: m["source"] in ("src/x.py", "n/one.md")),
    ({"tags": "draft"}, lambda m: "draft" in m.get("tags", [])),
    ({"tags": ["public", "draft"]}, lambda m: {"public", "draft"} <= set(m.get("tags", []))),
    ({"tags": {"$in": ["public", "draft"]}}, lambda m: bool({"public", "draft"} & set(m.get("tags", [])))),
    ({"tags": {"$nin": ["draft"]}}, lambda m: "draft" not in m.get("tags", [])),
    ({"$or": [{"owner": "cy"}, {"page": {"$gte": 5}}]}, lambda m: m.get("owner") == "cy" or (pages(m) or (0, 0))[1] >= 5),
    ({"$and": [{"kind": "pdf"}, {"$or": [{"owner": "bo"}, {"tags": "draft"}]}]},
     lambda m: m["kind"] == "pdf" and (m.get("owner") == "bo" or "draft" in m.get("tags", []))),
    ({"kind": "markdown", "score": {"$gt": 1}}, lambda m: m["kind"] == "markdown" and m.get("score", 0) > 1),
    ({"language": "python"}, lambda m: m.get("language") == "python"),
]


@pytest.mark.parametrize("where,pred", CASES, ids=[str(w)[:60] for w, _ in CASES])
def test_each_operator_matches_the_reference(store, where, pred):
    want = ref(pred)
    assert found(store, where) == want, where
    assert want or where == {}, "every case selects something"


def test_every_operator_is_covered():
    used = {op for w, _ in CASES for op in _ops(w)}
    assert set(OPERATORS) | {"$and", "$or"} <= used, set(OPERATORS) - used


def _ops(w):
    if isinstance(w, dict):
        for k, v in w.items():
            if k.startswith("$"):
                yield k
            yield from _ops(v)
    elif isinstance(w, list):
        for x in w:
            yield from _ops(x)


def test_filters_act_before_ranking(store):
    """k=1 with a filter still finds the one matching chunk, whatever outranks it unfiltered."""
    for mode in ("dense", "bm25", "hybrid"):
        hits = store.search("alpha report intro", k=1, mode=mode, filters={"owner": "cy"})
        assert [h.id for h in hits] == ["5"], mode


@pytest.mark.parametrize("where,needle", [
    ({"owner": {"$regex": "a.*"}}, "$regex"),
    ({"owner": {"$contains": "a"}}, "$contains"),
    ({"$not": {"owner": "ana"}}, "$not"),
    ({"owner": {}}, "empty operator"),
    ({"$or": []}, "$or takes a non-empty list"),
    ({"$and": {"owner": "ana"}}, "$and takes a non-empty list"),
    ({"owner": {"$in": "ana"}}, "$in takes a list"),
    ({"score": {"$gt": "high"}}, "a number or an ISO date"),
    ({"score": {"$gt": "2024-13-45"}}, "a number or an ISO date"),
    ({"page": {"$gte": "three"}}, "page number"),
    ({"kind": {"$gt": "a"}}, "cannot be compared"),
    ({"owner": {"$eq": {"x": 1}}}, "strings, numbers"),
    ({"bad key!": 1}, "invalid filter key"),
])
def test_bad_operators_are_refused_with_the_valid_ones(store, where, needle):
    with pytest.raises(InvalidInputError) as e:
        store.search("alpha", k=3, filters=where)
    text = str(e.value)
    assert needle in text
    assert all(op in text for op in OPERATORS) or "invalid filter key" in text


def test_deep_or_huge_filters_are_refused():
    deep: dict = {"owner": "ana"}
    for _ in range(12):
        deep = {"$and": [deep]}
    with pytest.raises(InvalidInputError, match="deeper"):
        compile_where(deep)
    with pytest.raises(InvalidInputError, match="more than"):
        compile_where({"$or": [{"owner": str(i)} for i in range(300)]})


def test_unknown_kind_tag_or_key_is_refused_with_what_there_is(store):
    with pytest.raises(InvalidInputError) as e:
        store.search("alpha", filters={"kind": "docx"})
    assert "unknown kind 'docx'" in e.value.message and all(k in e.value.message for k in ("code", "markdown", "pdf"))
    with pytest.raises(InvalidInputError) as e:
        store.search("alpha", filters={"kind": "python"})
    assert "language=python" in e.value.hint
    with pytest.raises(InvalidInputError) as e:
        store.search("alpha", filters={"tags": "secret"})
    assert "'secret'" in e.value.message and "draft" in e.value.message and "public" in e.value.message
    with pytest.raises(InvalidInputError) as e:
        store.search("alpha", filters={"colour": "red"})
    assert "'colour'" in e.value.message and "owner" in e.value.hint and "page" in e.value.hint


def test_cli_short_and_json_forms(store):
    assert combine(["owner=ana"], None) == {"owner": "ana"}
    assert combine(["page=3"], None) == {"page": 3}
    assert combine(["score=2"], None) == {"score": ["2", 2]}  # hand-written "2" or a parser's 2
    assert combine(["tags=a,b", "kind=pdf", "kind=markdown"], None) == {"tags": ["a", "b"], "kind": ["pdf", "markdown"]}
    w = combine(["kind=pdf"], '{"page": {"$gte": 3}}')
    assert w == {"$and": [{"kind": "pdf"}, {"page": {"$gte": 3}}]}
    assert found(store, w) == {1, 2}
    assert found(store, combine(["score=2"], None)) == {3}
    assert combine([], None) is None
    for bad in ("[1]", "{nope", '{"x": {"$like": 1}}'):
        with pytest.raises(InvalidInputError):
            combine([], bad)


def test_langchain_filter_takes_the_same_dict(store):
    pytest.importorskip("langchain_core")
    from retrieval.integrations.langchain import KnnragVectorStore

    vs = KnnragVectorStore(store=store)
    docs = vs.similarity_search("alpha", k=10, filter={"$or": [{"owner": "cy"}, {"page": {"$gte": 5}}]})
    assert sorted(d.metadata["source"] for d in docs) == ["a.pdf", "src/x.py"]


def test_operator_combinations_agree_with_the_reference(store):
    """$and/$or over pairs of the cases above give the intersection/union of their references."""
    simple = [(w, p) for w, p in CASES if not any(k.startswith("$") for k in w)][:8]
    for (w1, p1), (w2, p2) in itertools.combinations(simple, 2):
        assert found(store, {"$and": [w1, w2]}) == ref(p1) & ref(p2)
        assert found(store, {"$or": [w1, w2]}) == ref(p1) | ref(p2)
