"""Issue 30, the server's side: nothing outside the roots (cases 6-7), bounded sizes (case 11),
escaped chunk URIs (case 12) and clear answers (case 14), through the SDK's in-memory client.

The server here has no fixed --embedder, so `create_collection` chooses one; the store uses "hash-64".
"""
from __future__ import annotations

import os

import pytest
from mcp import Client

from mcp_server.server import ServerConfig, ServerState, build_server
from tests.support.docs import write_docs
from tests.support.mcp import text_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def free(tmp_path_factory):
    """A server without --embedder over a docs root (collections choose their embedder)."""
    base = tmp_path_factory.mktemp("issue30")
    root = write_docs(base / "root")
    cfg = ServerConfig(store=base / "store", allow_roots=(root,))
    state = ServerState(cfg)
    yield {"cfg": cfg, "state": state, "root": root, "base": base}
    state.close()


async def call(env, name, args=None):
    async with Client(build_server(env["cfg"], state=env["state"])) as c:
        return await c.call_tool(name, args or {})


# --------------------------------------------------------------------------- cases 6-7: embedder specs


async def test_create_collection_refuses_paths_outside_the_roots_with_one_error(free, tmp_path):
    outside_missing = str(tmp_path / "no-such-model")
    answers = []
    for spec in ("/etc", outside_missing, "/root/.ssh", "../../etc", "/work/../etc/passwd"):
        res = await call(free, "create_collection", {"name": "probe", "embedder": spec})
        assert res.is_error, (spec, text_of(res))
        answers.append(text_of(res).replace(repr(spec), "SPEC"))
    assert len(set(answers)) == 1, answers  # existing and missing paths read the same: nothing to probe
    assert "minilm" in answers[0] and "hash-N" in answers[0] and str(free["root"]) in answers[0]
    assert not (free["cfg"].store / "probe").exists()
    hub = await call(free, "create_collection", {"name": "probe", "embedder": "sentence-transformers/all-mpnet-base-v2"})
    assert hub.is_error and "no model folder at" in text_of(hub)  # a relative name is a path under the first root


async def test_create_collection_bounds_the_fake_dimension_and_listing_survives(free):
    for spec in ("hash-99999999", "hash-0", "hash-4", "hash-1234567890123"):
        res = await call(free, "create_collection", {"name": "huge", "embedder": spec})
        assert res.is_error and "from 8 to 4096" in text_of(res), (spec, text_of(res))
    ok = await call(free, "create_collection", {"name": "small", "embedder": "hash-32"})
    assert not ok.is_error and ok.structured_content["dim"] == 32, text_of(ok)
    listed = await call(free, "list_collections")
    assert not listed.is_error and "small" in text_of(listed) and "huge" not in text_of(listed)


@pytest.mark.slow  # waits on real time (watchers, queued writes, generation): 2-4 s alone
async def test_create_collection_takes_a_model_folder_under_a_root_only(free, tmp_path):
    inside = free["root"] / "models" / "bad"
    inside.mkdir(parents=True)
    res = await call(free, "create_collection", {"name": "inside", "embedder": str(inside)})
    # under the root the caller may learn what is wrong with its own folder
    assert res.is_error and "neither a known embedder" not in text_of(res), text_of(res)
    link = free["root"] / "models" / "escape"
    os.symlink("/etc", link)
    res = await call(free, "create_collection", {"name": "linked", "embedder": str(link)})
    assert res.is_error and "neither a known embedder nor a model folder under the allowed roots" in text_of(res)


def test_the_library_refuses_a_huge_fake_dimension(tmp_path):
    from retrieval.errors import InvalidInputError
    from retrieval.store import admin
    from retrieval.store.docstore import DocStore

    store = DocStore.open(tmp_path / "s", embedder=None, create=True)
    with pytest.raises(InvalidInputError, match="outside 8..4096"):
        admin.create_collection(store, "huge", embedder="hash-99999999")
    assert store.list_collections() == []


# --------------------------------------------------------------------------- case 12: chunk URIs escape ids

ODD_IDS = ["a/b", "a%2Fb", "..", ".", "x://y", "/abs", "C:\\x", "q?k=v#f", "sp ace", "ünï"]


async def test_chunk_uris_escape_ids_and_are_decoded_once(free):
    from retrieval.types import chunk_uri

    assert (await call(free, "create_collection", {"name": "uris", "embedder": "hash-64"})).structured_content
    texts = [f"text number {i} of the odd ids" for i in range(len(ODD_IDS))]
    res = await call(free, "add_texts", {"texts": texts, "ids": ODD_IDS, "collection": "uris"})
    assert not res.is_error and res.structured_content["ids"] == ODD_IDS, text_of(res)
    uris = [chunk_uri("uris", i) for i in ODD_IDS]
    assert len(set(uris)) == len(ODD_IDS) and chunk_uri("uris", "a/b") == "chunk://uris/a%2Fb"
    assert chunk_uri("uris", "a%2Fb") == "chunk://uris/a%252Fb" and chunk_uri("uris", "..") == "chunk://uris/%2E%2E"
    async with Client(build_server(free["cfg"], state=free["state"])) as c:
        for cid, uri, want in zip(ODD_IDS, uris, texts):
            got = await c.read_resource(uri)
            assert got.contents[0].text == want, (cid, uri)
        hits = (await c.call_tool("search", {"query": "odd ids", "collection": "uris", "k": 20})).structured_content
        assert {h["uri"] for h in hits["hits"]} == set(uris)
        for h in hits["hits"]:
            assert (await c.read_resource(h["uri"])).contents[0].text == h["text"]


# --------------------------------------------------------------------------- case 11: byte budgets


async def test_oversized_metadata_is_refused_at_write_time(free):
    big = {"source": "notes", "blob": "x" * 900_000}
    res = await call(free, "add_texts", {"texts": ["the heron waits"], "metadatas": [big], "collection": "uris"})
    assert res.is_error and "metadatas[0] is 900" in text_of(res) and "over the limit of 16384" in text_of(res)
    from retrieval.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="over the limit of 16384"):
        free["state"].store().add_texts(["the heron waits"], metadatas=[big], collection="uris")


async def test_a_hit_with_huge_stored_metadata_stays_small(free, monkeypatch):
    import json

    from retrieval.store import indexing

    monkeypatch.setattr(indexing, "MAX_METADATA_BYTES", 10**9)  # as a store written before the limit
    md = {"blob": "y" * 900_000, "nested": {"k": ["z" * 5000]}, **{f"key{i}": "v" * 900 for i in range(20)}}
    free["state"].store().add_texts(["the kingfisher dives for fish"], metadatas=[md], ids=["kf"], collection="uris")
    res = await call(free, "search", {"query": "kingfisher dives", "collection": "uris", "k": 5})
    assert not res.is_error, text_of(res)
    size = len(text_of(res)) + len(json.dumps(res.structured_content))
    assert size < 100_000, f"a search hitting a 900 KB metadata value returned {size} characters"
    top = res.structured_content["hits"][0]
    assert top["id"] == "kf" and "…[cut: 900000 characters in all]" in top["metadata"]["blob"]
    assert "…" in top["metadata"] and "metadata cut" in (res.structured_content.get("note") or "")
    got = await call(free, "get_chunks", {"ids": ["kf"], "collection": "uris"})
    assert len(text_of(got)) < 50_000


async def test_add_texts_has_a_total_budget_per_call(free):
    texts = ["w " * 50_000] * 21  # 2.1 M characters: each text is within its own limit
    res = await call(free, "add_texts", {"texts": texts, "collection": "uris"})
    assert res.is_error and "over the limit of 2000000 per call" in text_of(res) and "several add_texts" in text_of(res)


async def test_perplexity_text_is_bounded_before_any_model_loads(free):
    res = await call(free, "perplexity", {"text": "word " * 1000})
    assert res.is_error and "over the limit of 4000" in text_of(res), text_of(res)
    assert free["state"]._knnlm is None  # refused up front: nothing was loaded or scored


async def test_chunk_context_stays_within_the_result_budget(free):
    assert not (await call(free, "create_collection", {"name": "ctx", "embedder": "hash-64"})).is_error
    texts = [f"part {i} " + "of a long manual page " * 180 for i in range(41)]  # ~4 KB each
    res = await call(free, "add_texts", {"texts": texts, "ids": [f"p{i}" for i in range(41)],
                                         "metadatas": [{"source": "manual.md"}] * 41, "collection": "ctx"})
    assert not res.is_error, text_of(res)
    got = await call(free, "chunk_context", {"id": "p20", "before": 20, "after": 20, "collection": "ctx"})
    out = got.structured_content
    assert not got.is_error and len(text_of(got)) < free["cfg"].max_result_chars, len(text_of(got))
    assert out["chunk"]["id"] == "p20" and out["note"] and "far neighbours left out" in out["note"]
    assert out["before"][-1]["id"] == "p19" and out["after"][0]["id"] == "p21"  # the nearest ones are kept
