"""The knnrag MCP server: one `MCPServer`, state loaded lazily in its lifespan.

`initialize` must answer at once, so nothing heavy happens at construction or when the
lifespan starts: the document store, the LM and the kNN datastore are opened on the first
tool call that needs them (in a worker thread), once, and shared by every session.
Stdout is the stdio transport: everything here logs to stderr through `logging`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mcp_server.state import ServerConfig, ServerState

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["SERVER_NAME", "INSTRUCTIONS", "ServerConfig", "ServerState", "build_server", "run_stdio"]

SERVER_NAME = "knnrag"
INSTRUCTIONS = (
    "knnrag searches a local document store (hybrid BM25 + dense retrieval) and answers questions "
    "with numbered citations. Use `search` to find passages (each hit names its source file and "
    "line range; read the whole chunk with the chunk://{collection}/{id} resource), `ask` for a short "
    "grounded answer from the bundled small LM, `index_paths` to add files under the allowed roots "
    "(`start_indexing` + `index_status` for big trees), `add_texts` to add text directly, `get_chunks` and "
    "`chunk_context` to read chunks and their neighbours, `list_sources` to see which files a collection holds. "
    "The knn_* tools and `perplexity` expose the kNN-LM (base LM mixed with a token datastore)."
)


def _server_class() -> type[MCPServer]:
    """MCPServer whose argument errors are one caller-facing sentence (see validation.py)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import ValidationError

    from mcp_server.validation import describe

    class KnnragMCP(MCPServer):
        async def list_tools(self) -> Any:
            from mcp_server.schemas import compact_schema

            return [t.model_copy(update={"output_schema": compact_schema(t.output_schema)}) if t.output_schema else t
                    for t in await super().list_tools()]

        async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as e:
                cause = e.__cause__
                if isinstance(cause, ValidationError) and str(e).startswith(f"Error executing tool {name}: "):
                    raise ToolError(describe(name, cause.errors(include_url=False))) from cause
                raise

    return KnnragMCP


def build_server(config: ServerConfig, *, state: ServerState | None = None):
    """The MCPServer with every tool and the chunk resource registered; nothing loaded yet."""
    import anyio

    from mcp_server import admin_tools, lm_tools, source_tools, tools, write_tools
    from mcp_server.watching import ServerWatch

    shared = state or ServerState(config)

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[ServerState]:
        # Streamable HTTP enters this once per process; stdio once per connection.
        watch = ServerWatch(shared).start() if config.watch else None
        try:
            yield shared
        finally:
            if watch is not None:
                await anyio.to_thread.run_sync(watch.stop)
            if state is None:  # we own it
                shared.close()

    server = _server_class()(
        SERVER_NAME,
        title="knnrag: document RAG and kNN-LM",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=lifespan,
        log_level="WARNING",
    )
    for module in (tools, write_tools, admin_tools, lm_tools, source_tools):
        module.register(server)
    server.knnrag_state = shared  # type: ignore[attr-defined]  # the web page (mcp_server/web) serves from the same loaded store and models
    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("knnrag")
    except Exception:
        return "0"


def run_stdio(config: ServerConfig) -> None:
    import anyio

    from mcp_server.stdio import serve_stdio

    anyio.run(serve_stdio, build_server(config))
