"""A small docs folder for the RAG / MCP tests."""
from __future__ import annotations

from pathlib import Path

DOCS = {
    "routing.md": "# Routing\n\nPath parameters are declared with curly braces in the route, e.g. /items/{item_id}.\n"
                  "The value is passed to the function as an argument.\n",
    "deploy.md": "# Deployment\n\nRun the server behind a reverse proxy that terminates TLS.\n"
                 "Use several worker processes for throughput.\n",
    "notes/cache.md": "# Caching\n\nResponses can be cached with an ETag header and a max-age directive.\n",
}


def write_docs(root: Path) -> Path:
    for rel, text in DOCS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def docs_server_env(base: Path) -> dict:
    """A docs root, and an MCP server config + state over a store with the deterministic "hash-64"
    embedder that may index it; the caller closes env["state"]."""
    from mcp_server.server import ServerConfig, ServerState

    root = write_docs(base / "root")
    cfg = ServerConfig(store=base / "store", embedder="hash-64", allow_roots=(root,))
    return {"cfg": cfg, "state": ServerState(cfg), "root": root, "base": base}
