"""Collection administration tools: create_collection and drop_collection (destructive).

Thin wrappers over retrieval/store/admin.py. A server started with --embedder writes every
collection with that embedder (DocStore checks each collection against it), so there a
different `embedder` is refused up front instead of producing a collection it cannot search.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.tool_support import DESTRUCTIVE, Collection
from retrieval.embed.hash_embedder import MAX_DIM, MIN_DIM
from retrieval.errors import InvalidInputError
from retrieval.store import admin

DROP_WAIT_S = 5.0
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
NAMED = ("minilm", "default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
Name = Annotated[str, Field(description="collection name: letters, digits, '-' and '_'", pattern=T.COLLECTION_RE,
                            max_length=64)]


def allowed_embedder(spec: str, roots: Sequence[Path]) -> str:
    """`spec` if it names a known embedder, or the real path of a model folder under an allowed root.

    A client may not make the server load any file as a model, nor learn which paths exist: every
    path outside the roots gets the same error, decided before anything is looked up on disk.
    """
    m = re.fullmatch(r"hash-(\d+)", spec)
    if m:
        if len(m.group(1)) > 6 or not MIN_DIM <= int(m.group(1)) <= MAX_DIM:
            raise InvalidInputError(f"embedder {spec!r}: the dimension must be from {MIN_DIM} to {MAX_DIM}",
                                    "use e.g. hash-64 (a test fake), or minilm")
        return spec
    if spec in NAMED:
        return spec
    refused = InvalidInputError(
        f"embedder {spec[:200]!r} is neither a known embedder nor a model folder under the allowed roots",
        f"use one of: minilm (bundled all-MiniLM-L6-v2), hash-N with N from {MIN_DIM} to {MAX_DIM} (a test fake)"
        + ("; or a sentence-transformers folder under " + ", ".join(map(str, roots)) if roots else
           "; model folders are only taken under an --allow-root folder, and this server has none"))
    if not roots or "\x00" in spec or ".." in Path(spec).parts:
        raise refused
    p = Path(spec) if os.path.isabs(spec) else roots[0] / spec
    real = Path(os.path.realpath(p))  # symlinks resolved first: a link inside a root may point anywhere
    if not any(real == r or r in real.parents for r in roots):
        raise refused
    if not real.is_dir():  # inside a root: the caller may read it anyway, so say what is wrong
        raise InvalidInputError(f"embedder {spec[:200]!r}: there is no model folder at {real}",
                                "pass a sentence-transformers folder (config.json, weights, tokenizer) under "
                                + ", ".join(map(str, roots)) + ", or a known name: minilm, hash-64")
    return str(real)


def _register_create_collection(server: Any) -> None:
    @server.tool(annotations=CREATE, title="Create a collection")
    async def create_collection(
        name: Name,
        ctx: Context,
        embedder: Annotated[str | None, Field(description="embedding model: 'minilm' (bundled, the default), a "
                                                          "sentence-transformers folder under an allowed root, or "
                                                          "'hash-N' (test fake, N from 8 to 4096)",
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
            chosen: str | None
            if embedder is not None and embedder != fixed:
                chosen = allowed_embedder(embedder, state.config.allow_roots)
            else:
                chosen = spec
            return admin.create_collection(state.store(), name, embedder=chosen)

        d = await T.run_write(state, f"create_collection {name!r}", work)
        return T.result(S.CollectionCreatedOut(name=d["name"], embedder=d["embedder"], dim=d["dim"]))


def _register_drop_collection(server: Any) -> None:
    @server.tool(annotations=DESTRUCTIVE, title="Drop a collection")
    async def drop_collection(name: Collection, ctx: Context) -> Annotated[CallToolResult, S.CollectionDroppedOut]:
        """Delete a collection and every chunk in it. Destructive and irreversible."""
        state = T.state(ctx)

        def work() -> dict:
            # new searches queue behind a waiting drop, so it waits for running ones only briefly
            with state.gate.exclusive(DROP_WAIT_S):
                store = state.store()
                T.require_collection(store, name)
                return admin.drop_collection(store, name)

        d = await T.run_write(state, f"drop_collection {name!r}", work)
        return T.result(S.CollectionDroppedOut(name=d["name"], chunks=d["chunks"], sources=d["sources"]))


REGISTRARS = (_register_create_collection, _register_drop_collection)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
