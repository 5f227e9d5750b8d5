"""Collection administration tools: create_collection and drop_collection (destructive).

Thin wrappers over retrieval/store/admin.py. A server started with --embedder writes every
collection with that embedder (DocStore checks each collection against it), so there a
different `embedder` is refused up front instead of producing a collection it cannot search.
"""
from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.tool_support import DESTRUCTIVE, LOCK_WAIT_S, Collection
from retrieval.store import admin

DROP_WAIT_S = 5.0
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
Name = Annotated[str, Field(description="collection name: letters, digits, '-' and '_'", pattern=T.COLLECTION_RE,
                            max_length=64)]


def _register_create_collection(server: Any) -> None:
    @server.tool(annotations=CREATE, title="Create a collection")
    async def create_collection(
        name: Name,
        ctx: Context,
        embedder: Annotated[str | None, Field(description="embedding model: 'minilm' (bundled, the default), a local "
                                                          "sentence-transformers folder, or 'hash-64' (test fake)",
                                              min_length=1, max_length=1000)] = None,
    ) -> Annotated[CallToolResult, S.CollectionCreatedOut]:
        """Create an empty collection with its own embedding model; fill it with add_texts or index_paths."""
        state = T.state(ctx)
        fixed = state.config.embedder
        if embedder is not None and fixed is not None and embedder != fixed:
            raise ToolError(f"this server was started with --embedder {fixed}, so every collection it writes uses "
                            f"{fixed}. Hint: omit `embedder`, or restart the server without --embedder")
        spec = embedder if embedder is not None else fixed

        def work() -> dict:
            with state.write.held(f"create_collection {name!r}", wait_s=LOCK_WAIT_S):
                return admin.create_collection(state.store(), name, embedder=spec)

        d = await T.run(work)
        return T.result(S.CollectionCreatedOut(name=d["name"], embedder=d["embedder"], dim=d["dim"]))


def _register_drop_collection(server: Any) -> None:
    @server.tool(annotations=DESTRUCTIVE, title="Drop a collection")
    async def drop_collection(name: Collection, ctx: Context) -> Annotated[CallToolResult, S.CollectionDroppedOut]:
        """Delete a collection and every chunk in it. Destructive and irreversible."""
        state = T.state(ctx)

        def work() -> dict:
            # new searches queue behind a waiting drop, so it waits for running ones only briefly
            with state.write.held(f"drop_collection {name!r}", wait_s=LOCK_WAIT_S), state.gate.exclusive(DROP_WAIT_S):
                store = state.store()
                T.require_collection(store, name)
                return admin.drop_collection(store, name)

        d = await T.run(work)
        return T.result(S.CollectionDroppedOut(name=d["name"], chunks=d["chunks"], sources=d["sources"]))


REGISTRARS = (_register_create_collection, _register_drop_collection)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
