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
