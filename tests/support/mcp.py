"""Helpers for the MCP tool tests: a server over a test env's shared state, one tool call, result text."""
from __future__ import annotations

from typing import Any


def text_of(res) -> str:
    """The text blocks of a CallToolResult, joined: what an error message says."""
    return " ".join(getattr(b, "text", "") for b in res.content)


def server_for(env: dict, **overrides: Any):
    """The server of `env` (tests/support/docs.py); with overrides, a new config whose state shares
    the loaded store and LM."""
    from mcp_server.server import ServerConfig, ServerState, build_server

    if not overrides:
        return build_server(env["cfg"], state=env["state"])
    cfg = ServerConfig(**{**env["cfg"].__dict__, **overrides})
    state = ServerState(cfg)
    state._store, state._knnlm = env["state"].store(), env["state"]._knnlm
    return build_server(cfg, state=state)


async def call(env: dict, name: str, args: dict | None = None, **overrides: Any):
    """One tool call through the SDK's in-memory client."""
    from mcp import Client

    async with Client(server_for(env, **overrides)) as c:
        return await c.call_tool(name, args or {})
