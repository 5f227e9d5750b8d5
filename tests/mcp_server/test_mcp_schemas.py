"""The published output schemas: `$ref`s inlined (compact_schema) and hit lists checked lightly
(light_hits), each equivalent to or documented by the pydantic models the server validates with.

A real DocStore with the "hash-64" embedder, the SDK's in-memory client.
"""
from __future__ import annotations

import pytest
from mcp import Client

from mcp_server import schemas as S
from mcp_server.server import build_server
from tests.support.mcp import text_of

pytestmark = pytest.mark.anyio


def test_published_output_schemas_are_compact_and_equivalent():
    from jsonschema.validators import validator_for

    schema = S.JobsOut.model_json_schema()
    compact = S.compact_schema(schema)
    assert "$defs" not in str(compact) and "$ref" not in str(compact)
    ok = {"jobs": [{"job_id": "j", "state": "done", "what": "w", "collection": "c", "percent": 100.0, "stage": "done",
                    "done": 1, "total": None, "message": "m", "elapsed_seconds": 1.0, "error": None,
                    "result": {"collection": "c", "paths": []}}]}
    bad = [{"jobs": [{**ok["jobs"][0], "total": "x"}]}, {"jobs": [{**ok["jobs"][0], "result": {"paths": []}}]},
           {"jobs": "no"}, {}]
    for instance in [ok, *bad]:
        a = not list(validator_for(schema)(schema).iter_errors(instance))
        b = not list(validator_for(compact)(compact).iter_errors(instance))
        assert a == b == (instance is ok), instance


async def test_hit_lists_publish_a_light_item_check_and_the_typed_hit_for_reading(env):
    """The SDK client walks every structured result with jsonschema; a $ref to the typed HitOut cost
    it ~0.3 ms per hit. Items are checked for their keys only, and HitOut is still published."""
    from jsonschema.validators import validator_for

    async with Client(build_server(env["cfg"], state=env["state"])) as c:
        assert not (await c.call_tool("index_paths", {"paths": [str(env["root"])]})).is_error
        tools = {t.name: t for t in (await c.list_tools()).tools}
        res = await c.call_tool("search", {"query": "how are path parameters declared", "k": 3})
    assert not res.is_error and res.structured_content["hits"], text_of(res)
    for name, fields in (("search", ("hits",)), ("get_chunks", ("chunks",)), ("chunk_context", ("before", "chunk", "after"))):
        schema = tools[name].output_schema
        assert set(schema["$defs"]) == {"HitOut"} and "$ref" not in str(schema), name
        for f in fields:
            item = schema["properties"][f] if f == "chunk" else schema["properties"][f]["items"]
            assert item["type"] == "object" and set(item["required"]) == set(S.HitOut.model_fields), (name, f)
            assert "properties" not in item and "HitOut" in item["description"], (name, f)
    schema = tools["search"].output_schema
    check, typed = validator_for(schema)(schema), validator_for(schema)(schema["$defs"]["HitOut"])
    assert schema["$defs"]["HitOut"]["properties"]["start_line"]["type"] == "integer"
    assert not list(check.iter_errors(res.structured_content))
    assert all(not list(typed.iter_errors(h)) for h in res.structured_content["hits"])
    no_text = {**res.structured_content, "hits": [{k: v for k, v in h.items() if k != "text"}
                                                  for h in res.structured_content["hits"]]}
    assert list(check.iter_errors(no_text))  # a hit without a field still fails the published check
    assert list(typed.iter_errors({**res.structured_content["hits"][0], "start_line": "1"}))
