"""Chunk ids are opaque strings: only the exact assigned spelling names an assigned chunk, and an id
a user gives never collides with one the store assigns (issue 30, case 4)."""
from __future__ import annotations

import pytest

from retrieval.store.docstore import DocStore


@pytest.fixture
def store(tmp_path):
    s = DocStore.open(tmp_path / "s", embedder="hash-64")
    yield s
    s.close()


def _texts(store, ids):
    return [h.text for h in store.get(ids)]


@pytest.mark.parametrize("alias", ["03", "٣", "３", "+3", " 3", "3.0", "²", "9" * 30])
def test_lookalike_ids_are_other_ids(store, alias):
    ids = store.add_texts(["one", "two", "three"])
    assert ids == ["1", "2", "3"]
    assert _texts(store, [alias]) == []
    assert store.delete(ids=[alias])["removed_chunks"] == 0
    new = store.add_texts(["replacement"], ids=[alias])  # a new chunk with that id; chunk 3 stays
    assert new == [alias]
    assert _texts(store, ["3"]) == ["three"] and _texts(store, [alias]) == ["replacement"]


def test_given_ids_never_collide_with_assigned_ones(store):
    assert store.add_texts(["given two"], ids=["2"]) == ["2"]
    assigned = store.add_texts(["a", "b", "c"])
    assert "2" not in assigned  # the store skips the id the user took
    assert _texts(store, ["2"]) == ["given two"]
    assert len({h.id for h in store.get(["2", *assigned])}) == 4


def test_a_given_assigned_form_id_replaces_that_chunk(store):
    store.add_texts(["one", "two"])
    assert store.add_texts(["TWO"], ids=["2"]) == ["2"]
    assert _texts(store, ["2"]) == ["TWO"] and store.stats("default")["chunks"] == 2
