"""The MCP tool tests' shared server: a docs root and a "hash-64" store, one per module, and that
root indexed once.

test_mcp_tools.py overrides `env` with one that also loads a tiny LM.
"""
from __future__ import annotations

import pytest

from tests.support.docs import docs_server_env
from tests.support.mcp import call, text_of


@pytest.fixture(scope="module")
def env(tmp_path_factory, request):
    env = docs_server_env(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield env
    env["state"].close()


@pytest.fixture(scope="module")
async def indexed(env):
    res = await call(env, "index_paths", {"paths": [str(env["root"])]})
    assert not res.is_error, text_of(res)
    return res.structured_content
